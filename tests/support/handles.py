"""The one fake DeploymentHandle of the tests: a plain object behind in-process calls.

`LocalHandle(target)`: `handle.method.remote(*args, **kwargs)` runs `target.method` (sync or
async; LocalResponse arguments resolved first, as Serve resolves responses passed into a call)
as a task at once and returns a LocalResponse; `.options(multiplexed_model_id=...)` picks the
model (the replica reads it from clipfleet.replicas.multiplexed.REQUESTED_MODEL); `calls`
records every call (`Call`: method, model id, args, kwargs), shared by the handles `options`
derives; `isolated=True` runs each call in a fresh context, as over Ray (nothing the caller set
in its context variables reaches the replica unless the call carries it). A target's method
that raises makes the response raise, as a replica's failure does. `Answering()` is a target
whose every method answers its own name (for tests of what a wrapper sends).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any, NamedTuple

from clipfleet.replicas.multiplexed import REQUESTED_MODEL


class LocalResponse:
    """Awaitable like a DeploymentResponse; starts running at once."""

    def __init__(self, coroutine) -> None:
        self._task = asyncio.ensure_future(coroutine)

    def __await__(self):
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class Call(NamedTuple):
    method: str
    model_id: str | None
    args: tuple
    kwargs: dict


class LocalMethod:
    def __init__(self, handle: LocalHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args, **kwargs) -> LocalResponse:
        handle = self._handle
        handle.calls.append(Call(self._name, handle.model_id, args, kwargs))
        function = getattr(handle._target, self._name)

        async def run():
            if handle.model_id is not None:  # what Serve's multiplexed_model_id carries
                REQUESTED_MODEL.set(handle.model_id)  # in this task's own context
            resolved = [await arg if isinstance(arg, LocalResponse) else arg for arg in args]
            result = function(*resolved, **kwargs)
            return await result if inspect.isawaitable(result) else result

        if handle.isolated:
            return contextvars.Context().run(LocalResponse, run())
        return LocalResponse(run())


class LocalHandle:
    """See the module docstring."""

    def __init__(
        self,
        target: Any,
        model_id: str | None = None,
        calls: list[Call] | None = None,
        isolated: bool = False,
    ) -> None:
        self._target = target
        self.model_id = model_id
        self.isolated = isolated
        self.calls: list[Call] = [] if calls is None else calls

    def options(self, multiplexed_model_id: str) -> LocalHandle:
        return LocalHandle(self._target, multiplexed_model_id, self.calls, self.isolated)

    def __getattr__(self, name: str) -> LocalMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        getattr(self._target, name)  # a method the target lacks fails here, as on a handle
        return LocalMethod(self, name)


class Answering:
    """A stand-in replica: every method answers its own name."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def answer(*args, **kwargs) -> str:
            return name

        return answer
