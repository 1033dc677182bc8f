"""Build llama.cpp's `llama-server` and convert a Hugging Face model to GGUF, cached by version.

    python scripts/llama_server.py build               # prints the server binary's path
    python scripts/llama_server.py convert MODEL_DIR   # prints the GGUF file's path

`Server` runs the built server on loopback for the tests and the benchmark.

The tests of the remote target run against a real `llama-server`. No CPU wheel ships one, so
it is built from the llama.cpp vendored in the pinned `llama-cpp-python` sdist (PyPI), with
cmake, once per machine: about 9 minutes on 2 cores the first time, then reused from
`$CONFSPEC_CACHE` (default `~/.cache/langchain-confspec`), keyed by that version. The same
tree's `convert_hf_to_gguf.py` converts a model (about 10 s for the demo pair), keyed by the
version and a hash of the model's files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
"""The `llama-cpp-python` sdist whose vendored llama.cpp is built."""
CMAKE_FLAGS = (
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",  # else cmake downloads a web UI
)  # fmt: skip
BUILD_TOOLS = ("cmake", "ninja", "c++")
PRE_TOKENIZER = "starcoder"
"""The demo tokenizer's split (single digits, then the GPT-2 pattern) under llama.cpp's name:
its hash is not in the converter's table, so the type is given explicitly."""


def cache_dir() -> Path:
    return Path(os.environ.get("CONFSPEC_CACHE", Path.home() / ".cache" / "langchain-confspec")) / f"llama-cpp-{VERSION}"


def source_tree() -> Path:
    """The vendored llama.cpp, downloaded and unpacked once."""
    root = cache_dir()
    tree = root / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if tree.is_dir():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(root),
         f"llama-cpp-python=={VERSION}"],
        check=True,
    )  # fmt: skip
    with tarfile.open(root / f"llama_cpp_python-{VERSION}.tar.gz") as archive:
        archive.extractall(root, filter="data")
    return tree


def missing_build_tools() -> list[str]:
    return [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]


def build() -> Path:
    """The `llama-server` binary, built on first use."""
    binary = cache_dir() / "bin" / "llama-server"
    if binary.is_file():
        return binary
    if missing := missing_build_tools():
        raise RuntimeError(f"building llama-server needs {', '.join(missing)}, not installed here")
    tree = source_tree()
    work = cache_dir() / "build"
    subprocess.run(["cmake", "-S", str(tree), "-B", str(work), *CMAKE_FLAGS], check=True, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 1)
    subprocess.run(["cmake", "--build", str(work), "--target", "llama-server", "-j", jobs], check=True, stdout=subprocess.DEVNULL)
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(work / "bin" / "llama-server", binary.with_suffix(".tmp"))
    binary.with_suffix(".tmp").replace(binary)  # a build cut short leaves no half binary behind
    shutil.rmtree(work, ignore_errors=True)
    return binary


def convert(model_dir: Path) -> Path:
    """`model_dir` as a float32 GGUF file, converted on first use."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    out = cache_dir() / "gguf" / f"{model_dir.name}-{digest.hexdigest()[:16]}-f32.gguf"
    if out.is_file():
        return out
    tree = source_tree()
    out.parent.mkdir(parents=True, exist_ok=True)
    # The converter decides the pre-tokenizer from a hash of the tokenizer's output; the demo's
    # is not in its table, so the known-equivalent type is forced for this run. It also tries
    # SentencePiece first for a Llama model, importing a package that a BPE model never needs.
    runner = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        "import conversion.base\n"
        f"conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {PRE_TOKENIZER!r}\n"
        "sentencepiece = conversion.base.TextModel._set_vocab_sentencepiece\n"
        "def bpe_first(self):\n"
        "    if not (self.dir_model / 'tokenizer.model').is_file():\n"
        "        raise FileNotFoundError('tokenizer.model')\n"
        "    return sentencepiece(self)\n"
        "conversion.base.TextModel._set_vocab_sentencepiece = bpe_first\n"
        f"sys.argv = ['convert_hf_to_gguf.py', {str(model_dir)!r}, '--outtype', 'f32', '--outfile', {str(out) + '.tmp'!r}]\n"
        f"runpy.run_path({str(tree / 'convert_hf_to_gguf.py')!r}, run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", runner], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    Path(str(out) + ".tmp").replace(out)
    return out


class Server:
    """A `llama-server` on a free loopback port, serving `gguf` over `slots` slots of `window`
    tokens, exactly as the model reads in fp32 (no CPU flash attention, which computes in half
    precision; an f32 KV cache), on one thread without busy-waiting (`-t 1 --poll 0`)."""

    def __init__(self, binary: Path, gguf: Path, *extra: str, slots: int = 4, window: int = 2048, port: int = 0) -> None:
        self.port = port
        if not port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(slots * window),
            "-np", str(slots), "--no-kv-unified", "-t", "1", "--poll", "0", "-ctk", "f32", "-ctv", "f32", "-fa", "off", *extra,
        ]  # fmt: skip
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop(); a pipe nobody reads would stall the server
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                if self.process.poll() is not None:
                    self.log.seek(0)
                    raise RuntimeError(f"llama-server exited: {self.log.read().decode()[-2000:]}") from None
                time.sleep(0.2)
        raise RuntimeError("llama-server did not become ready in 60 s")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    conversion = sub.add_parser("convert")
    conversion.add_argument("model_dir", type=Path)
    args = parser.parse_args()
    print(build() if args.command == "build" else convert(args.model_dir))


if __name__ == "__main__":
    main()
