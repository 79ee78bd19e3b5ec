"""Deployment handles whose calls to some methods carry keywords read at call time (the trace
context, the request's priority class): the caller's context variables do not cross a handle
call, so what the callee needs of them travels as keywords."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any


class _KeywordMethod:
    def __init__(self, method: Any, keywords: Callable[[], dict[str, Any]]) -> None:
        self._method = method
        self._keywords = keywords

    def remote(self, *args, **kwargs):
        for key, value in self._keywords().items():
            kwargs.setdefault(key, value)
        return self._method.remote(*args, **kwargs)


class KeywordHandle:
    """`handle` whose `.method.remote(...)` calls, for `methods`, add `keywords()`."""

    def __init__(
        self, handle: Any, methods: Collection[str], keywords: Callable[[], dict[str, Any]]
    ) -> None:
        self._handle = handle
        self._methods = methods
        self._keywords = keywords

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._handle, name)
        return _KeywordMethod(method, self._keywords) if name in self._methods else method

    def options(self, **options: Any) -> KeywordHandle:
        """handle.options(...) (e.g. multiplexed_model_id), still adding the keywords."""
        return type(self)(self._handle.options(**options), self._methods, self._keywords)


def wrap_handles(handles: Any, wrap: Callable[[Any], Any]) -> Any:
    """`wrap` applied to a handle, or to the handles in nested dicts and lists."""
    if isinstance(handles, dict):
        return {key: wrap_handles(value, wrap) for key, value in handles.items()}
    if isinstance(handles, list | tuple):
        return [wrap_handles(value, wrap) for value in handles]
    return wrap(handles)
