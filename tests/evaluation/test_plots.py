
from embrm.data._synthetic import synthetic_pool
from embrm.evaluation._aggregate import aggregate_all, standardize
from embrm.evaluation._bon import bon_curves
from embrm.evaluation._plots import plot_bon, plot_gao_fit

PNG = b"\x89PNG\r\n\x1a\n"


def _curves():
    sp = synthetic_pool(40, 32, dim=8, seed=0, embeddings=False)
    return bon_curves(sp.prompt_index, aggregate_all(standardize(sp.scores), ("mean", "min", "uwo")), sp.gold)


def test_plot_bon_png(tmp_path):
    c = _curves()
    for x in ("kl", "d", "n"):
        p = plot_bon(c.frame() if x == "kl" else c, tmp_path / f"bon_{x}.png", x=x, references={"published RM": 0.5})
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_plot_gao_fit_png(tmp_path):
    p = plot_gao_fit(_curves(), tmp_path / "sub" / "gao.png")
    assert p.read_bytes().startswith(PNG)
