"""PythonQt idioms on PySide6, by rewriting the source of chosen files as they are imported.

Slicer's Python talks to Qt through PythonQt, which differs from PySide6 in three ways the
module file and Slicer's own sources rely on:

- Qt properties read and written as attributes: ``label.text = "..."``, ``combo.count``,
  ``button.enabled``; a property shadows the getter method of the same name;
- ``obj.name`` is the ``objectName``;
- string signals: ``obj.connect("clicked(bool)", slot)`` and ``obj.disconnect(...)``.

Instead of changing the module (it must stay valid PythonQt), :func:`rewrite` turns the source
of a file into an equivalent tree whose attribute accesses, ``hasattr/getattr/setattr`` and
string-signal connects go through the helpers below, which apply PythonQt's rules to Qt objects
and Python's to everything else. Line numbers are kept, so tracebacks and line coverage point
at the real file. :class:`RewritingImports` applies it to every file under chosen folders,
through ``SourceFileLoader.get_code`` (so ``importlib.reload`` and Slicer's
``reloadScriptedModule`` get the same treatment) without writing bytecode caches.
"""

import ast
import importlib.machinery
import os
import re
import sys

from PySide6 import QtCore

_PREFIX = "_pythonqt_"
_SIGNAL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$")


def _qt_property(obj, name):
    """The Qt property ``name`` of QObject ``obj`` if it has one (static or dynamic), else
    None. Python data descriptors of stand-in classes take precedence (as PythonQt would see
    the C++ property they model)."""
    if not isinstance(obj, QtCore.QObject):
        return None
    if isinstance(getattr(type(obj), name, None), property):
        return None
    meta = obj.metaObject()
    if meta.indexOfProperty(name) >= 0:
        return name
    return None


def pq_get(obj, name):
    """``obj.name`` under PythonQt's rules."""
    if isinstance(obj, QtCore.QObject):
        if name == "name":
            return obj.objectName()
        if _qt_property(obj, name) is not None:
            return obj.property(name)
    return getattr(obj, name)


def pq_set(obj, name, value):
    """``obj.name = value`` under PythonQt's rules."""
    if isinstance(obj, QtCore.QObject):
        if name == "name":
            obj.setObjectName(value)
            return
        if _qt_property(obj, name) is not None:
            if isinstance(value, tuple):  # PythonQt converts any sequence to a QList
                value = list(value)
            if not obj.setProperty(name, value):
                raise TypeError(f"cannot set Qt property {name!r} of {type(obj).__name__} to "
                                f"{value!r}")
            return
    setattr(obj, name, value)


def pq_hasattr(obj, name):
    if isinstance(obj, QtCore.QObject) and (name == "name" or _qt_property(obj, name)):
        return True
    return hasattr(obj, name)


_MISSING = object()


def pq_getattr(obj, name, default=_MISSING):
    try:
        return pq_get(obj, name)
    except AttributeError:
        if default is _MISSING:
            raise
        return default


def _signal(obj, signature):
    match = _SIGNAL.match(signature)
    if match is None:
        raise ValueError(f"not a PythonQt signal signature: {signature!r}")
    signal = getattr(obj, match.group(1))
    return signal


def pq_connect(obj, signature, slot):
    """``obj.connect("signal(args)", slot)``: connect by the signal's name."""
    _signal(obj, signature).connect(slot)
    return True


def pq_disconnect(obj, signature, slot=None):
    signal = _signal(obj, signature)
    try:
        if slot is None:
            signal.disconnect()
        else:
            signal.disconnect(slot)
    except (RuntimeError, TypeError):  # PythonQt returns False for "was not connected"
        return False
    return True


HELPERS = {"get": pq_get, "set": pq_set, "hasattr": pq_hasattr, "getattr": pq_getattr,
           "connect": pq_connect, "disconnect": pq_disconnect}


def _helper(name, node):
    return ast.copy_location(ast.Name(id=_PREFIX + name, ctx=ast.Load()), node)


class _Rewriter(ast.NodeTransformer):
    """Attribute loads (not method calls), attribute stores, hasattr/getattr/setattr and
    string-signal connect/disconnect calls -> the helpers."""

    def __init__(self):
        self._temp = 0

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("connect", "disconnect") \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and "(" in node.args[0].value:
            target = self.visit(func.value)
            args = [self.visit(a) for a in node.args]
            return ast.copy_location(ast.Call(func=_helper(func.attr, node),
                                              args=[target] + args, keywords=[]), node)
        if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and not node.keywords:
            node.args = [self.visit(a) for a in node.args]
            node.func = _helper(func.id, func)
            return node
        if isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) == 3:
            node.args = [self.visit(a) for a in node.args]
            node.func = _helper("set", func)
            return node
        if isinstance(func, ast.Attribute):  # a method call: keep obj.method(...)
            func.value = self.visit(func.value)
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
            return node
        return self.generic_visit(node)

    # annotations stay as written: typing and the parameter-node wrapper read them
    def visit_arg(self, node):
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        if isinstance(node.target, ast.Attribute) and node.value is not None:
            return self._set(node.target, node.value, node)
        return node

    def _visitFunction(self, node):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [self.visit(d) if d is not None else None
                                 for d in node.args.kw_defaults]
        node.body = [self.visit(s) for s in node.body]
        node.body = [x for s in node.body for x in (s if isinstance(s, list) else [s])]
        return node

    visit_FunctionDef = _visitFunction
    visit_AsyncFunctionDef = _visitFunction

    def visit_Attribute(self, node):
        if isinstance(node.ctx, ast.Load):
            value = self.visit(node.value)
            return ast.copy_location(ast.Call(func=_helper("get", node),
                                              args=[value, ast.Constant(node.attr)],
                                              keywords=[]), node)
        node.value = self.visit(node.value)
        return node

    def _set(self, target, value, node):
        return ast.copy_location(ast.Expr(ast.Call(
            func=_helper("set", node), args=[self.visit(target.value), ast.Constant(target.attr),
                                             value], keywords=[])), node)

    def _name(self, node):
        self._temp += 1
        return f"{_PREFIX}tmp{self._temp}"

    def visit_Assign(self, node):
        targets = node.targets
        if not any(self._hasAttributeStore(t) for t in targets):
            return self.generic_visit(node)
        value = self.visit(node.value)
        temp = self._name(node)
        out = [ast.copy_location(ast.Assign(targets=[ast.Name(temp, ast.Store())], value=value),
                                 node)]
        for target in targets:
            out += self._assignTo(target, ast.Name(temp, ast.Load()), node)
        return [ast.fix_missing_locations(s) for s in out]

    def _hasAttributeStore(self, target):
        if isinstance(target, ast.Attribute):
            return True
        if isinstance(target, (ast.Tuple, ast.List)):
            return any(self._hasAttributeStore(t) for t in target.elts)
        return False

    def _assignTo(self, target, value, node):
        if isinstance(target, ast.Attribute):
            return [self._set(target, value, node)]
        if isinstance(target, (ast.Tuple, ast.List)) and self._hasAttributeStore(target):
            names, out = [], []
            for element in target.elts:
                names.append(self._name(node))
            out.append(ast.copy_location(ast.Assign(
                targets=[ast.Tuple([ast.Name(n, ast.Store()) for n in names], ast.Store())],
                value=value), node))
            for element, n in zip(target.elts, names):
                out += self._assignTo(element, ast.Name(n, ast.Load()), node)
            return out
        return [ast.copy_location(ast.Assign(targets=[self.visit(target)], value=value), node)]

    def visit_AugAssign(self, node):
        if not isinstance(node.target, ast.Attribute):
            return self.generic_visit(node)
        target = node.target
        current = ast.Call(func=_helper("get", node),
                           args=[self.visit(target.value), ast.Constant(target.attr)],
                           keywords=[])
        value = ast.BinOp(left=current, op=node.op, right=self.visit(node.value))
        return ast.fix_missing_locations(self._set(target, value, node))


def rewrite(source, filename):
    """The code object of ``source`` with PythonQt semantics (see the module docstring)."""
    tree = ast.parse(source, filename)
    tree = _Rewriter().visit(tree)
    # the helpers as module globals, after the docstring and any __future__ import
    body = tree.body
    at = 0
    while at < len(body) and (
            (isinstance(body[at], ast.Expr) and isinstance(body[at].value, ast.Constant))
            or (isinstance(body[at], ast.ImportFrom) and body[at].module == "__future__")):
        at += 1
    names = [ast.alias(name=fn.__name__, asname=_PREFIX + key) for key, fn in HELPERS.items()]
    body.insert(at, ast.ImportFrom(module=__name__, names=names, level=0))
    ast.fix_missing_locations(tree)
    return compile(tree, filename, "exec", dont_inherit=True)


class RewritingImports:
    """While active, files under ``folders`` are compiled through :func:`rewrite` when
    imported (also by ``importlib.reload`` and ``spec_from_file_location``), bytecode caches
    neither read nor written for them."""

    def __init__(self, folders):
        self.folders = [os.path.realpath(f) + os.sep for f in folders]
        self._original = None

    def covers(self, path):
        path = os.path.realpath(path)
        return any(path.startswith(f) for f in self.folders)

    def __enter__(self):
        loader = importlib.machinery.SourceFileLoader
        original = self._original = loader.get_code
        tier = self

        def get_code(self, fullname):
            path = self.get_filename(fullname)
            if tier.covers(path):
                with open(path, "rb") as f:
                    source = f.read()
                return rewrite(source, path)
            return original(self, fullname)

        loader.get_code = get_code
        self._dontWrite = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        return self

    def __exit__(self, *exc):
        importlib.machinery.SourceFileLoader.get_code = self._original
        sys.dont_write_bytecode = self._dontWrite
        return False
