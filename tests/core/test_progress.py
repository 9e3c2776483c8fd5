"""embrm.core._progress: plain progress lines outside a terminal, silence when disabled."""

import re

import pytest

from embrm.core._errors import EmbrmError
from embrm.core._progress import Progress, Stages, format_duration

LINE = re.compile(r"^loop: (\d+)/5 items \((\d+)%\), \d+\.\d items/s, ETA (\?|\d+s|\d+m\d\ds|\d+h\d\dm)(, .+)?$")


def test_lines_outside_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("EMBRM_PROGRESS_EVERY", "0")  # a line at every step
    with Progress(5, "loop", enabled=None) as bar:
        for i in range(5):
            bar.advance()
            if i == 2:
                bar.set_description("2 running")
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 5, err  # one per step; no duplicate final line
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m.group(1)) for m in parsed] == [1, 2, 3, 4, 5]
    assert parsed[-1].group(2) == "100" and parsed[-1].group(3) == "0s"
    assert lines[-1].endswith(", 2 running")


def test_final_line_only_when_slow_interval(capsys, monkeypatch):
    monkeypatch.delenv("EMBRM_PROGRESS_EVERY", raising=False)
    with Progress(5, "loop", every=3600) as bar:
        bar.advance(5)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]) and lines[0].startswith("loop: 5/5 items (100%)")


def test_disabled_is_silent(capfd, monkeypatch):
    monkeypatch.setenv("EMBRM_PROGRESS_EVERY", "0")
    with Progress(5, "loop", enabled=False) as bar:
        for _ in range(5):
            bar.advance()
        bar.set_description("x")
    with Stages("fit", 2, enabled=False) as stages:
        stages.done("labels")
    assert capfd.readouterr() == ("", "")


def test_stages_and_env_and_duration(capsys, monkeypatch):
    monkeypatch.delenv("EMBRM_PROGRESS_EVERY", raising=False)
    with Stages("fit", 2) as stages:
        stages.done("labels")
        stages.done("members")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["fit: 1/2 steps (50%)", "fit: 2/2 steps (100%)"]
    assert lines[-1].endswith("members done")
    monkeypatch.setenv("EMBRM_PROGRESS_EVERY", "soon")
    with pytest.raises(EmbrmError, match="EMBRM_PROGRESS_EVERY"):
        Progress(1, "x")
    assert [format_duration(s) for s in (0.4, 42, 200, 3900, float("inf"))] == ["0s", "42s", "3m20s", "1h05m", "?"]


class _Counting:
    """A stand-in embedder: 2-d vectors from the text length."""

    def embed(self, texts, starts=None):
        from embrm.embedding.backends._base import EmbedBatch

        n = len(texts)
        return EmbedBatch.build([[len(t), 1.0] for t in texts], [len(t) for t in texts], [False] * n)


@pytest.mark.parametrize("progress, lines", [(None, 3), (True, 3), (False, 0)])
def test_embed_prints_lines_from_a_script(tmp_path, capsys, monkeypatch, progress, lines):
    from embrm.embedding._cache import EmbeddingCache
    from embrm.embedding._embed import embed_texts

    monkeypatch.setenv("EMBRM_PROGRESS_EVERY", "0")
    cache = EmbeddingCache(tmp_path, {"backend": "test", "model": "counting", "template": "{prompt}{response}"})
    keys, n = embed_texts([f"text {i}" for i in range(5)], _Counting(), cache, batch_size=2, progress=progress)
    err = capsys.readouterr().err.splitlines()
    assert n == 5 and len(err) == lines, err
    if lines:
        assert err[-1].startswith("embed: 5/5 texts (100%), ") and "texts/s, ETA " in err[-1]


def test_a_step_count_under_stages_prints_only_when_it_lasts(capsys, monkeypatch):
    """A stage's own count (a fit's epochs) prints periodic lines outside a terminal, no closing line of its own
    when it was short (the stage's line says it ended), and nothing when no Stages runs."""
    from embrm.core import step_progress

    with step_progress(3, "alone", "epochs") as bar:  # no Stages: silent
        bar.advance(3)
    with Stages("fit", 1) as stages:
        with step_progress(3, "epochs of the fit", "epochs") as bar:
            bar.advance(3)
        stages.done("members")
    quiet = capsys.readouterr().err
    assert "alone" not in quiet and "epochs of the fit" not in quiet and "members done" in quiet
    monkeypatch.setenv("EMBRM_PROGRESS_EVERY", "0")
    with Stages("fit", 1) as stages:
        with step_progress(3, "epochs of the fit", "epochs") as bar:
            for _ in range(3):
                bar.advance()
        stages.done("members")
    lines = [line for line in capsys.readouterr().err.splitlines() if "epochs of the fit" in line]
    assert len(lines) == 3 and lines[-1].startswith("epochs of the fit: 3/3 epochs")
