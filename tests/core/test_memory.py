"""The memory a planned allocation is checked against: the host's available memory and a cgroup's limit."""

import pytest

from embrm.core import EmbrmError, available_memory, check_size
from embrm.core._checks import _cgroup_available


def test_a_cgroup_limit_caps_what_is_available(tmp_path):
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert _cgroup_available(str(tmp_path)) == 600_000
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_available(str(tmp_path)) == 2 ** 63
    assert _cgroup_available(str(tmp_path / "no-cgroup")) == 2 ** 63


def test_check_size_refuses_more_than_is_available_in_one_line():
    assert 0 < available_memory() < 2 ** 63
    check_size("x", "a small array", 1024, "use less")
    with pytest.raises(EmbrmError, match=r"^x: a huge array would take 1024\.0 GiB of memory, but 1\.0 GiB is "
                                         r"available: use less$"):
        check_size("x", "a huge array", 2 ** 40, "use less", free=2 ** 30)
