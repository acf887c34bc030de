"""Every name a package advertises in ``__all__`` is importable from it (the README's usage)."""
import importlib

import pytest


@pytest.mark.parametrize("package", ["lift", "correspondence"])
def test_all_names_resolve(package):
    mod = importlib.import_module(package)
    assert mod.__all__, package
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"


def test_issue_level_entry_points():
    from correspondence import align, estimate_relative_pose, filter_matches, find_homography
    from lift import LIFT, detect_and_describe

    assert callable(align) and callable(filter_matches) and callable(find_homography)
    assert callable(estimate_relative_pose) and callable(detect_and_describe)
    assert hasattr(LIFT, "create")
    with pytest.raises(AttributeError):
        importlib.import_module("correspondence").no_such_name
