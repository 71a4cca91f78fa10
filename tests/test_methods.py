"""rpcd/methods.py: loading `pkg.mod` and `pkg.mod:obj`, reserved and duplicate names, modules
that fail, the `@method` forms, and parameter binding errors that name the parameter."""

from __future__ import annotations

import sys
import types

import pytest

from rpcd.methods import LoadError, Registry, method
from rpcd.wire import INVALID_PARAMS, METHOD_NOT_FOUND, RPCError


@pytest.fixture
def make_module(monkeypatch):
    """make_module(name, source) -> a module importable as `name` for this test only."""

    def make(name: str, source: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__dict__["method"] = method
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    return make


def names(registry: Registry) -> list[str]:
    """What a load added: every registry starts with rpc.cancel (the connection answers it)."""
    return [m.name for m in registry if m.name != "rpc.cancel"]


def call(registry: Registry, name: str, *args, **kwargs):
    return registry.get(name).func(*args, **kwargs)


# -- pkg.mod: the @method functions defined in the module ----------------------------------


def test_module_form_adds_the_marked_functions_defined_there(make_module):
    make_module("m_other", "@method\ndef elsewhere(): return 'other'\n")
    make_module(
        "m_plain",
        "from m_other import elsewhere\n"  # marked, but defined in another module: not added
        "@method\ndef add(a, b): return a + b\n"
        "@method()\ndef ping(): return 'pong'\n"
        "@method('math.mul')\ndef mul(a, b): return a * b\n"
        "def helper(): return 'unmarked'\n",
    )
    registry = Registry()
    assert registry.load("m_plain") == 3
    assert names(registry) == ["add", "math.mul", "ping"]
    assert call(registry, "math.mul", 6, 7) == 42
    with pytest.raises(RPCError) as info:
        registry.get("helper")
    assert info.value.code == METHOD_NOT_FOUND and info.value.data == {"method": "helper"}
    assert info.value.message == "method not found: helper"


def test_two_modules_load_into_one_registry(make_module):
    make_module("m_a", "@method\ndef a(): return 1\n")
    make_module("m_b", "@method\ndef b(): return 2\n")
    registry = Registry()
    assert registry.load("m_a") == 1 and registry.load("m_b") == 1
    assert names(registry) == ["a", "b"]


# -- pkg.mod:obj: an object's public methods, a class instantiated with no arguments -------


OBJECTS = """
class Counter:
    instances = 0

    def __init__(self):
        Counter.instances += 1
        self.count = 0

    def bump(self, by=1):
        self.count += by
        return self.count

    def read(self):
        return self.count

    @method("counter.reset")
    def reset(self):
        self.count = 0
        return True

    def _private(self):
        return "hidden"

    hidden_attribute = 5  # not callable: not a method

counter = Counter()
"""


def test_object_form_adds_its_public_methods_bound_to_it(make_module):
    module = make_module("m_obj", OBJECTS)
    registry = Registry()
    assert registry.load("m_obj:counter") == 3
    assert names(registry) == ["bump", "counter.reset", "read"]  # a @method name is used
    assert call(registry, "bump", 5) == 5 and module.counter.count == 5  # the object itself
    assert call(registry, "counter.reset") is True and call(registry, "read") == 0


def test_class_form_is_instantiated_once_with_no_arguments(make_module):
    module = make_module("m_cls", OBJECTS)
    registry = Registry()
    assert registry.load("m_cls:Counter") == 3
    assert module.Counter.instances == 2  # the module's `counter`, and the one load made
    assert call(registry, "bump") == 1 and call(registry, "bump", 2) == 3  # one shared state
    assert module.counter.count == 0


def test_object_form_with_a_missing_attribute(make_module):
    make_module("m_obj2", OBJECTS)
    with pytest.raises(LoadError) as info:
        Registry().load("m_obj2:nothing")
    assert str(info.value) == "methods module 'm_obj2' has no attribute 'nothing'"


def test_class_that_needs_arguments_is_a_load_error(make_module):
    make_module(
        "m_args", "class NeedsArgs:\n    def __init__(self, x): pass\n    def f(self): pass\n"
    )
    with pytest.raises(LoadError, match="m_args:NeedsArgs"):
        Registry().load("m_args:NeedsArgs")


# -- names: reserved, duplicate, none at all -------------------------------------------------


def test_names_beginning_with_rpc_are_reserved(make_module):
    make_module("m_reserved", "@method('rpc.stats')\ndef mine(): return {}\n")
    with pytest.raises(LoadError) as info:
        Registry().load("m_reserved")
    assert str(info.value) == (
        "method name 'rpc.stats' is reserved: names beginning with 'rpc.' are the server's"
    )
    make_module("m_reserved_obj", "class C:\n    @method('rpc.x')\n    def x(self): pass\n")
    with pytest.raises(LoadError, match="'rpc.x' is reserved"):
        Registry().load("m_reserved_obj:C")
    # Only the server's own built-ins may use the prefix; "rpcx" is not the prefix.
    registry = Registry()
    registry.add("rpc.mine", lambda: 1, builtin=True)
    registry.add("rpcx", lambda: 2)
    assert names(registry) == ["rpc.mine", "rpcx"]


def test_a_name_defined_twice_is_refused(make_module):
    make_module("m_twice", "@method('same')\ndef one(): pass\n@method('same')\ndef two(): pass\n")
    with pytest.raises(LoadError) as info:
        Registry().load("m_twice")
    assert str(info.value) == "method 'same' is defined twice"
    # ... across two modules, and one module loaded twice
    make_module("m_first", "@method\ndef shared(): return 1\n")
    make_module("m_second", "@method\ndef shared(): return 2\n")
    registry = Registry()
    registry.load("m_first")
    with pytest.raises(LoadError, match="'shared' is defined twice"):
        registry.load("m_second")
    with pytest.raises(LoadError, match="'shared' is defined twice"):
        registry.load("m_first")
    assert call(registry, "shared") == 1  # the first definition stays
    # ... and a module method clashing with a built-in
    builtins = Registry()
    builtins.add("ping", lambda: "pong", builtin=True)
    make_module("m_ping", "@method\ndef ping(): return 'mine'\n")
    with pytest.raises(LoadError, match="'ping' is defined twice"):
        builtins.load("m_ping")


def test_a_module_with_no_methods_is_a_load_error(make_module):
    make_module("m_empty", "def unmarked(): pass\n")
    with pytest.raises(LoadError) as info:
        Registry().load("m_empty")
    assert str(info.value) == (
        "methods module 'm_empty' exposes no methods (mark them with @rpcd.method)"
    )
    make_module("m_private", "class C:\n    def _only_private(self): pass\n")
    with pytest.raises(LoadError, match="'m_private:C' exposes no methods"):
        Registry().load("m_private:C")


# -- modules that fail to import -------------------------------------------------------------


def test_a_module_that_raises_on_import_is_a_load_error():
    sys.modules.pop("tests.integration.broken_methods", None)
    with pytest.raises(LoadError) as info:
        Registry().load("tests.integration.broken_methods")
    assert str(info.value) == (
        "cannot import methods module 'tests.integration.broken_methods': broken on purpose"
    )
    assert isinstance(info.value.__cause__, RuntimeError)  # the cause is kept for the traceback


def test_a_module_that_does_not_exist_is_a_load_error():
    with pytest.raises(LoadError) as info:
        Registry().load("no_such_rpcd_methods_module:obj")
    assert str(info.value) == (
        "cannot import methods module 'no_such_rpcd_methods_module': "
        "No module named 'no_such_rpcd_methods_module'"
    )


def test_a_module_with_a_syntax_error_is_a_load_error(tmp_path, monkeypatch):
    (tmp_path / "m_syntax.py").write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="cannot import methods module 'm_syntax': invalid syntax"):
        Registry().load("m_syntax")


# -- the @method decorator ------------------------------------------------------------------


def test_method_decorator_forms_leave_the_function_callable():
    def plain(a):
        return a

    assert method(plain) is plain and plain(1) == 1  # @method returns the function itself
    assert method()(plain) is plain
    assert method("named")(plain) is plain
    registry = Registry()
    registry.add("direct", plain)
    assert call(registry, "direct", 3) == 3


def test_empty_name_falls_back_to_the_function_name(make_module):
    make_module("m_empty_name", "@method('')\ndef fallback(): return 1\n")
    registry = Registry()
    registry.load("m_empty_name")
    assert names(registry) == ["fallback"]


def test_method_name_without_decorating_marks_nothing(make_module):
    # `method("x")` alone (forgetting to apply it) decorates nothing: the module has no methods.
    make_module("m_forgot", "method('x')\ndef f(): pass\n")
    with pytest.raises(LoadError, match="exposes no methods"):
        Registry().load("m_forgot")


def test_a_name_that_is_not_a_string_is_refused_clearly(make_module):
    with pytest.raises(TypeError, match="method name"):  # where the decorator is applied
        make_module("m_badname", "@method(5)\ndef f(): pass\n")


# -- binding params: the error names the parameter -------------------------------------------


def test_bind_error_names_the_parameter(make_module):
    make_module(
        "m_bind",
        "@method\ndef add(a, b): return a + b\n@method\ndef opts(*, level='info'): return level\n",
    )
    registry = Registry()
    registry.load("m_bind")
    add, opts = registry.get("add"), registry.get("opts")
    cases = [
        (add, (1,), "invalid params for add: missing a required argument: 'b'"),
        (add, (1, 2, 3), "invalid params for add: too many positional arguments"),
        (add, {"a": 1}, "invalid params for add: missing a required argument: 'b'"),
        (
            add,
            {"a": 1, "b": 2, "c": 3},
            "invalid params for add: got an unexpected keyword argument 'c'",
        ),
        (opts, ("warn",), "invalid params for opts: too many positional arguments"),
    ]
    for target, params, message in cases:
        error = target.bind_error(params)
        assert isinstance(error, RPCError) and error.code == INVALID_PARAMS
        assert error.message == message, (params, error.message)


def test_bind_error_without_a_signature_still_names_the_method():
    registry = Registry()
    # An object inspect cannot give a signature for.
    registry.add("opaque", type("Opaque", (), {"__call__": None, "__signature__": 5})())
    error = registry.get("opaque").bind_error((1,))
    assert error.code == INVALID_PARAMS and error.message.startswith("invalid params for opaque")
    assert registry.get("opaque").describe()["signature"] == "opaque(...)"
