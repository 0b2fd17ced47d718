"""A stand-in for Hugging Face's `spaces` package on a ZeroGPU Space, enforcing ZeroGPU's rules on a CPU host.

What the real package does on ZeroGPU (spaces/zero/torch, read from its source), and what this stand-in does:

* In the main process CUDA must not be initialised: the real package replaces torch's CUDA initialisation with one
  that raises "CUDA must not be initialized in the main process"; here `torch.cuda._lazy_init` (the Python hook every
  CUDA initialisation goes through, a tensor created on "cuda" included) raises the same error in the main process.
* `torch.cuda.is_available()` answers True in the main process, and moving tensors/modules to "cuda" there is
  deferred: the real package keeps the weights packed on the host and moves them when a GPU is attached. Here
  `Tensor.to("cuda")` in the main process leaves the tensor where it is and counts the deferral (`deferred`); in the
  child, the stand-in's "GPU" is this CPU, so tensors stay on the CPU there too.
* `@spaces.GPU` runs the function in a forked child process, with its arguments pickled to it and its results (every
  item of a generator function) pickled back; exceptions come back too.

`install(monkeypatch)` puts the module in `sys.modules["spaces"]` and patches torch; `monkeypatch` undoes both.
`forward_pids(module)` lists the process ids every `nn.Module` forward ran in (a global forward hook writes them to a
file, so the child's forwards are seen by the parent): on ZeroGPU every one of them must be a child's.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import pickle
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

CUDA_IN_MAIN = ("CUDA must not be initialized in the main process on Spaces with Stateless GPU environment "
                "(stand-in spaces)")


def _cuda_target(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, str):
        return target.startswith("cuda")
    return isinstance(target, torch.device) and target.type == "cuda"


def _on_cpu(args, kwargs):
    """The same `.to(...)` call with the cuda device replaced by the CPU (this host's stand-in for the GPU)."""
    if "device" in kwargs:
        return args, {**kwargs, "device": "cpu"}
    return ("cpu", *args[1:]), kwargs


def _run_in_child(fn, payload: bytes, conn) -> None:
    """The child: unpickle the call, run it, send back ("item", x)... then ("done", None) or ("error", exc)."""
    try:
        # The parent's OpenMP thread pool does not survive fork (GNU OpenMP deadlocks in the child's first parallel
        # region): the stand-in's "GPU" computes on one CPU thread.
        torch.set_num_threads(1)
        args, kwargs = pickle.loads(payload)
        result = fn(*args, **kwargs)
        items = result if inspect.isgenerator(result) else [result]
        for item in items:
            conn.send_bytes(pickle.dumps(("item", item)))
        conn.send_bytes(pickle.dumps(("done", None)))
    except BaseException as exc:  # noqa: BLE001 - sent back to the parent, which raises it
        try:
            conn.send_bytes(pickle.dumps(("error", exc)))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            conn.send_bytes(pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}"))))
    finally:
        conn.close()


def install(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    main_pid = os.getpid()
    module = types.ModuleType("spaces")
    module.wrapped, module.calls, module.deferred = [], [], []
    module.pids_file = Path(tempfile.mkdtemp(prefix="fake-spaces-")) / "forward_pids"
    module.pids_file.touch()

    def in_main() -> bool:
        return os.getpid() == main_pid

    real_lazy_init, real_to = torch.cuda._lazy_init, torch.Tensor.to

    def lazy_init() -> None:
        if in_main():
            raise RuntimeError(CUDA_IN_MAIN)
        real_lazy_init()

    def tensor_to(self, *args, **kwargs):
        if _cuda_target(args, kwargs):  # deferred in the main process; the child's "GPU" is this CPU
            if in_main():
                module.deferred.append(tuple(self.shape))
            args, kwargs = _on_cpu(args, kwargs)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "_lazy_init", lazy_init)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "to", tensor_to)

    def GPU(fn=None, **options):  # noqa: N802 - the real decorator's name; @spaces.GPU and @spaces.GPU(duration=...)
        if fn is None:
            return lambda f: GPU(f, **options)
        module.wrapped.append(fn)
        generator = inspect.isgeneratorfunction(fn)

        def call(*args, **kwargs):
            assert in_main(), "spaces.GPU functions are called from the main process"
            module.calls.append(args)
            payload = pickle.dumps((args, kwargs))  # ZeroGPU pickles the call to its worker
            parent, child = multiprocessing.Pipe(duplex=False)
            process = multiprocessing.get_context("fork").Process(target=_run_in_child, args=(fn, payload, child))
            process.start()
            child.close()
            try:
                while True:
                    kind, value = pickle.loads(parent.recv_bytes())
                    if kind == "item":
                        yield value
                    elif kind == "done":
                        return
                    else:
                        raise value
            finally:
                parent.close()
                process.join(timeout=60)

        if generator:
            return call

        def plain(*args, **kwargs):
            return next(call(*args, **kwargs))

        return plain

    module.GPU = GPU

    def record(_module, _inputs) -> None:
        with open(module.pids_file, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    monkeypatch.setitem(sys.modules, "spaces", module)
    monkeypatch.setattr(module, "remove_hook", handle.remove, raising=False)
    module.main_pid = main_pid
    return module


def forward_pids(module: types.ModuleType) -> list[int]:
    return [int(line) for line in module.pids_file.read_text(encoding="utf-8").split()]
