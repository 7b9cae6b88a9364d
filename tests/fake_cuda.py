"""A fake CuPy for the runtime's tests without a GPU: devices of given compute
capabilities, an NVRTC that records its compiles and a module loader that
records what it loads. Failures can be planted in each."""

from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

NVRTC_13_ARCHS = (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121)
NVRTC_12_ARCHS = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90)


class FakeNvrtcError(Exception):
    pass


class FakeNvrtc:
    """``cupy.cuda.nvrtc``: each compile gives a fake image naming its source and options."""

    NVRTCError = FakeNvrtcError

    def __init__(
        self,
        version=(13, 0),
        archs=NVRTC_13_ARCHS,
        compile_error=None,
        compiler_log=None,
        compile_seconds=0.0,
    ):
        self.version = version
        self.archs = archs
        self.compile_error = compile_error  # raised by compileProgram (any exception)
        self.compiler_log = compiler_log  # a failed compile with this log
        self.compile_seconds = compile_seconds
        self.compiles: list[tuple[str, tuple[str, ...]]] = []
        self._lock = threading.Lock()
        if archs is not None:
            self.getSupportedArchs = lambda: archs

    def getVersion(self):
        return self.version

    def createProgram(self, source, name, headers, include_names):
        return SimpleNamespace(source=source, name=name, options=None)

    def compileProgram(self, program, options):
        time.sleep(self.compile_seconds)
        if self.compile_error is not None:
            raise self.compile_error
        if self.compiler_log is not None:
            raise FakeNvrtcError("NVRTC_ERROR_COMPILATION (6)")
        program.options = tuple(options)
        with self._lock:
            self.compiles.append((program.name, program.options))

    def getProgramLog(self, program):
        return self.compiler_log or ""

    def getCUBIN(self, program):
        return f"FAKE-CUBIN {program.name} {' '.join(program.options)}".encode()

    def getPTX(self, program):
        return f"// FAKE-PTX {program.name} {' '.join(program.options)}".encode()

    def destroyProgram(self, program):
        pass


class FakeCupy:
    """The slice of CuPy the runtime and the checks use."""

    def __init__(self, capabilities=(80,), nvrtc=None, capturing=False, load_error=None):
        self.nvrtc = nvrtc if nvrtc is not None else FakeNvrtc()
        self.load_error = load_error  # raised by Module.load (any exception)
        self.loads: list[tuple[int, bytes]] = []
        self.launches: list[tuple] = []
        self.current_device = 0
        fake = self

        class Device:
            def __init__(self, index):
                self.index = index
                self.compute_capability = str(capabilities[index])

            def __enter__(self):
                self.previous, fake.current_device = fake.current_device, self.index
                return self

            def __exit__(self, *exc):
                fake.current_device = self.previous
                return False

        class Function:
            def __init__(self, module, name):
                self.module, self.name = module, name

            def __call__(self, grid, block, args, shared_mem=0):
                fake.launches.append((self.module.device, self.name, grid, block))

        class Module:
            def load(self, image):
                if fake.load_error is not None:
                    raise fake.load_error
                self.device = fake.current_device
                self.image = image
                fake.loads.append((self.device, image))

            def get_function(self, name):
                return Function(self, name)

        runtime = SimpleNamespace(
            getDeviceCount=lambda: len(capabilities),
            getDeviceProperties=lambda index: {"name": f"Fake GPU sm_{capabilities[index]}"},
            streamIsCapturing=lambda stream: 1 if capturing else 0,
        )
        stream_class = SimpleNamespace(from_external=lambda handle: contextlib.nullcontext())
        self.cuda = SimpleNamespace(
            nvrtc=self.nvrtc,
            runtime=runtime,
            Device=Device,
            Stream=stream_class,
            function=SimpleNamespace(Module=Module),
        )
