"""L0: `python -m guestkit lava job`: a LAVA job of kind emulated (a), kvmhost (b) or server (c), and its image.

(a) emulated: an arm64 guest under QEMU TCG (`-M virt -cpu max -smp 2`) with an ivshmem
    BAR (00:02.0 under LAVA's qemu device type), running the suite on ram / pci / kmod.
(b) kvmhost: one host kernel of the lab as an emulated KVM host
    (`virtualization=on,iommu=smmuv3,gic-version=3`), its VFIO modules loaded and the ivshmem
    BAR bound to vfio-pci (guestkit.lab.l0_hostboot), dmattr loaded: the kvm target's probes.
(c) server: a real arm64 server booting the same host kernel and ramdisk over tftp (grub),
    with a device of the user's bound to vfio-pci.

Every kind boots ONE merged initramfs (guestkit.lava.l0_image) whose /init gives LAVA a
shell; the tests are lava/dmtbench-probe.yaml and lava/dmtbench-run.yaml, inlined into
the job (or taken from git with --repository).  The job and its files go to one directory:
job.yaml, device.yaml (for lava-run), Image, ramdisk.cpio.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import metadata
from bench.errors import UserError
from guestkit import image, kernels
from guestkit.deps import find_parts
from guestkit.lab import l0_hostboot as hostboot
from guestkit.lava import l0_device as device
from guestkit.lava import l0_image
from guestkit.paths import arch_cache
from guestkit.qemu import get_arch

KINDS = ("emulated", "kvmhost", "server")
DEFINITIONS = Path(__file__).resolve().parent.parent.parent / "lava"
IVSHMEM_BYTES = 4 << 20
IVSHMEM_BDF = f"0000:00:{device.IVSHMEM_SLOT:02x}.0"
MACHINES = {"emulated": "qemu-arm64-tcg", "kvmhost": "qemu-arm64-kvmhost", "server": ""}
KVM_BACKINGS = ("vfio", "sysfs", "ram", "kmod-normal", "kmod-normal-nc", "kmod-device-ngnre")
CMDLINE = "console=ttyAMA0 rdinit=/init quiet loglevel=3"


@dataclass(frozen=True)
class Test:
    """One test definition of lava/ with its parameters."""

    name: str                 # probe | run
    params: dict[str, str]


@dataclass(frozen=True)
class JobSpec:
    """What `lava job` was asked for."""

    kind: str
    kernel: str | None = None            # host/guest kernel name (guestkit.kernels); None: the default guest kernel
    tests: tuple[Test, ...] = ()
    machine: str = ""                    # results/<machine>/ (the guest's host name); "" = the kind's default
    bdf: str = IVSHMEM_BDF               # the device the kvm target uses (b: the ivshmem BAR; c: the user's)
    timeout_minutes: int = 30
    repository: str = ""                 # test definitions from this git URL instead of inline
    revision: str = ""
    url_base: str = ""                   # (c) where the lab downloads the kernel and ramdisk from
    server: device.ServerConfig = field(default_factory=device.ServerConfig)


@dataclass(frozen=True)
class WrittenJob:
    """The files `lava job` wrote."""

    directory: Path
    job: Path
    device: Path
    kernel: Path
    ramdisk: Path
    machine: str
    kernel_version: str


def yaml_dump(data: dict) -> str:
    """YAML for a LAVA job or device (PyPI's PyYAML, which TuxRun brings: deps --lava)."""
    try:
        import yaml
    except ImportError:
        raise UserError("writing LAVA jobs needs PyYAML: run 'python -m guestkit deps --lava'") from None
    return yaml.safe_dump(data, sort_keys=False, width=1000)


def default_tests(kind: str, bdf: str, probes: list[str], fast: bool, cases: str = "probe",
                  upload: str = "") -> tuple[Test, ...]:
    """The kind's usual tests: (b) and (c) the kvm target's probes on every backing; (a) the
    probes on ram and the ivshmem BAR; with fast, a `bench run --fast` too.  cases: LAVA
    cases per probe, or per stage-1 attribute (lava/dmtbench-probe.yaml's CASES); upload:
    the lab's artifact store URL the raw files are also PUT to."""
    probe_params = {"PROBES": " ".join(probes), "ATTRIBUTES": "", "LABEL": "lava", "CASES": cases, "UPLOAD": upload}
    if kind == "emulated":
        targets = f"ram pci:{bdf}/2"
        tests = [Test("probe", {"TARGET": targets, **probe_params})]
        if fast:
            tests.append(Test("run", {"TARGET": "ram", "ATTRIBUTES": "", "WORKLOADS": "", "SIZE": "", "LABEL": "lava",
                                      "UPLOAD": upload}))
        return tuple(tests)
    targets = " ".join("kvm:ram" if b == "ram" else f"kvm:{b}:{bdf}/2" for b in KVM_BACKINGS)
    return (Test("probe", {"TARGET": targets, **probe_params}),)


def definition(test: Test, spec: JobSpec) -> dict:
    """One entry of the job's test `definitions:`."""
    path = DEFINITIONS / f"dmtbench-{test.name}.yaml"
    if not path.exists():
        raise UserError(f"no test definition {path}")
    entry = {"name": f"dmtbench-{test.name}", "path": f"lava/dmtbench-{test.name}.yaml", "parameters": dict(test.params)}
    if spec.repository:
        entry.update({"from": "git", "repository": spec.repository})
        if spec.revision:
            entry["revision"] = spec.revision
        return entry
    try:
        import yaml
    except ImportError:
        raise UserError("writing LAVA jobs needs PyYAML: run 'python -m guestkit deps --lava'") from None
    entry.update({"from": "inline", "path": f"inline/dmtbench-{test.name}.yaml",
                  "repository": yaml.safe_load(path.read_text())})
    return entry


def context(spec: JobSpec, ivshmem_path: str) -> device.QemuContext:
    """The qemu device context of kind (a) or (b)."""
    ivshmem = (f"-object memory-backend-file,id=ivshmem0,size={IVSHMEM_BYTES},mem-path={ivshmem_path},share=on",
               f"-device ivshmem-plain,memdev=ivshmem0,bus=pcie.0,addr={device.IVSHMEM_SLOT:#x}")
    # -smp 2 with multi-threaded TCG: what makes QEMU model Device alignment faults.
    common = ("-smp 2", "-accel tcg,thread=multi", *ivshmem)
    if spec.kind == "kvmhost":
        return device.QemuContext(machine="virt,virtualization=on,iommu=smmuv3,gic-version=3",
                                  memory=hostboot.MEMORY_MB, extra_options=common)
    return device.QemuContext(extra_options=common)


def guest_files(spec: JobSpec, kernel: kernels.Kernel | None) -> tuple[dict[str, bytes], list[list[str]]]:
    """Files and setup commands the kind adds: VFIO modules, the bind and dmattr (b, c)."""
    if spec.kind == "emulated" or kernel is None:
        return {}, [["sh", "-c", f"echo 1 > /sys/bus/pci/devices/{spec.bdf}/enable || true"]]
    from guestkit.lab import l0_command

    job = hostboot.host_job(kernel, bind_ivshmem=False)
    files, setup = dict(job.files), list(job.setup)
    setup.append(["sh", "-c", (f"echo vfio-pci > /sys/bus/pci/devices/{spec.bdf}/driver_override && "
                              f"echo {spec.bdf} > /sys/bus/pci/drivers_probe")])
    module = l0_command.module_files(kernel)
    files.update(module)
    if "dmattr.ko" in module:
        setup.append(["insmod", "/dmtbench/dmattr.ko"])
    return files, setup


def build_ramdisk(dest: Path, spec: JobSpec, kernel: kernels.Kernel | None, machine: str) -> Path:
    """Write the merged initramfs of this job to dest."""
    arch = get_arch("arm64")
    parts = find_parts(arch)
    files, setup = guest_files(spec, kernel)
    placeholder = {"argv": ["true"], "machine": machine, "setup": [], "env": {}}
    overlay = image.build_job(arch, arch_cache(arch.name), placeholder, files)
    return l0_image.write_merged(dest, parts.base, overlay, machine, setup, {"DMTBENCH_COMMIT": metadata.git_commit()})


def place(src: Path, dest: Path) -> None:
    """The kernel image in the job directory: a hard link where the cache shares the file
    system (instant), else a copy."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def job_dict(spec: JobSpec, kernel_url: str, ramdisk_url: str, ctx: device.QemuContext | None, name: str) -> dict:
    """The LAVA job (YAML as a dict)."""
    tests = [definition(t, spec) for t in spec.tests]
    job: dict = {"device_type": "qemu" if ctx else "arm64-server", "job_name": name,
                 "timeouts": {"job": {"minutes": spec.timeout_minutes}, "action": {"minutes": spec.timeout_minutes},
                              "connection": {"minutes": 2}},
                 "priority": "medium", "visibility": "public"}
    if ctx:
        emulated = " dmtbench.emulated=1"  # read back by bench.metadata.emulated()
        job["context"] = ctx.as_job_context()
        deploy = {"to": "tmpfs", "timeout": {"minutes": 5},
                  "images": {"kernel": {"image_arg": f'-kernel {{kernel}} -append "{CMDLINE}{emulated}"',
                                        "url": kernel_url},
                             "ramdisk": {"image_arg": "-initrd {ramdisk}", "url": ramdisk_url,
                                         "format": "cpio.newc", "overlays": {"lava": True}}}}
        boot = {"method": "qemu", "media": "tmpfs", "timeout": {"minutes": 5}, "prompts": [l0_image.PROMPT],
                "parameters": {"kernel-start-message": l0_image.START}}
    else:
        deploy = {"to": "tftp", "timeout": {"minutes": 10},
                  "kernel": {"url": kernel_url, "type": "image"},
                  "ramdisk": {"url": ramdisk_url, "install_modules": False, "install_overlay": True}}
        boot = {"method": "grub", "commands": "ramdisk", "timeout": {"minutes": 10}, "prompts": [l0_image.PROMPT],
                "parameters": {"kernel-start-message": l0_image.START}}
    job["actions"] = [{"deploy": deploy}, {"boot": boot},
                      {"test": {"timeout": {"minutes": spec.timeout_minutes - 5}, "definitions": tests}}]
    return job


def write(spec: JobSpec, out: Path) -> WrittenJob:
    """Write job.yaml, device.yaml, the kernel and the merged ramdisk into `out`."""
    if spec.kind not in KINDS:
        raise UserError(f"unknown job kind {spec.kind!r}: use one of {', '.join(KINDS)}")
    if spec.kind == "server" and not spec.kernel:
        raise UserError("a server job boots a host kernel: name it with --kernel (e.g. 6.12)")
    arch = get_arch("arm64")
    kernel = kernels.get(arch, spec.kernel) if (spec.kernel or spec.kind != "emulated") else None
    version = kernel.version if kernel else find_parts(arch).kernel_version
    machine = spec.machine or MACHINES[spec.kind] or spec.server.hostname
    out.mkdir(parents=True, exist_ok=True)
    kernel_path, ramdisk_path = out / "Image", out / "ramdisk.cpio"
    place(kernel.image if kernel else find_parts(arch).kernel, kernel_path)
    build_ramdisk(ramdisk_path, spec, kernel, machine)
    base = spec.url_base.rstrip("/")
    # file:// URLs as LAVA reads them: the path verbatim (it does not unquote, so no %2B
    # for the `+` of 6.12.117+deb12, which Path.as_uri() would write).
    urls = (f"{base}/Image", f"{base}/ramdisk.cpio") if base else (f"file://{kernel_path.resolve()}",
                                                                       f"file://{ramdisk_path.resolve()}")
    ctx = context(spec, f"/dev/shm/dmtbench-ivshmem-{int(time.time())}") if spec.kind != "server" else None
    name = f"dmtbench {spec.kind} {version}"
    job_path, device_path = out / "job.yaml", out / "device.yaml"
    job_path.write_text(yaml_dump(job_dict(spec, *urls, ctx, name)))
    device_path.write_text(yaml_dump(device.qemu(ctx) if ctx else device.server(spec.server)))
    (out / "job.json").write_text(json.dumps({"kind": spec.kind, "machine": machine, "kernel": version,
                                              "bdf": spec.bdf}, indent=1))
    return WrittenJob(out, job_path, device_path, kernel_path, ramdisk_path, machine, version)
