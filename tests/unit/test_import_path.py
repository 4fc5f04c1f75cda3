"""protocols/run/import_path.py: the one reading of `package.module:name` paths in configs."""

from __future__ import annotations

import pytest

from protocols.run.import_path import ImportPathError, import_object


def test_an_import_path_names_the_object_and_every_way_it_can_be_wrong(tmp_path, monkeypatch):
    (tmp_path / "broken_user_module.py").write_text("value = 1\nother = name_nobody_defined\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_object("json:loads").__name__ == "loads"
    assert import_object("json:JSONDecoder.decode").__name__ == "decode"  # a dotted name
    with pytest.raises(ImportPathError, match="^expected the form 'package.module:name'$"):
        import_object("json")
    with pytest.raises(ImportPathError, match="^module 'json' has no attribute 'nope'$"):
        import_object("json:nope")
    with pytest.raises(ImportPathError, match="^cannot import module 'no_such_module_here': ModuleNotFoundError: "
                                              "No module named 'no_such_module_here'$"):
        import_object("no_such_module_here:x")
    # A user's module that breaks while it is imported: the error says where, for a one-line refusal.
    with pytest.raises(ImportPathError, match=r"^cannot import module 'broken_user_module': NameError: name "
                                              r"'name_nobody_defined' is not defined \(at .*broken_user_module.py:2\)$"):
        import_object("broken_user_module:value")
