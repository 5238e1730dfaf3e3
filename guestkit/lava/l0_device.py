"""L0: the device dictionaries `lava-run` needs, written by our own code (no LAVA template is shipped).

A LAVA server renders a device's dictionary from its device-type template (lava-server's
etc/dispatcher-config/device-types/*.jinja2) and the job's `context:`; a standalone
`lava-run` takes the rendered YAML.  We build that YAML here, as a dict, instead of
committing the templates (LAVA is AGPL/GPL; the templates come with lava-server's source,
not with the dispatcher package).  What we build is what LAVA 2023.01's `qemu.jinja2`
(extending `base.jinja2`) renders for the same context, reduced to the keys the
dispatcher reads for our jobs: checked by rendering those templates (tag 2023.01 of
Linaro's lava repository) with jinja2 and comparing (see docs/lava.md).  In particular
the qemu template always adds `-net nic,model=virtio,... -net user`, which puts a virtio NIC
at 00:01.0, so an ivshmem device the job adds sits at 00:02.0 (IVSHMEM_SLOT).

`server()` is the dictionary of a real arm64 server in the style of `base-grub.jinja2`
(grub over tftp, ramdisk or nfs): the power and console commands are the lab's, given by
the user; lava-run validates it here, and it runs where such a lab exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IVSHMEM_SLOT = 2  # under LAVA's qemu device type: the NIC takes slot 1
QEMU_MAC = "52:54:00:12:34:58"  # the template's default


@dataclass(frozen=True)
class QemuContext:
    """The job context a qemu device is rendered with (the names are the template's)."""

    arch: str = "arm64"
    cpu: str = "max"
    machine: str = "virt"
    memory: int = 1024
    extra_options: tuple[str, ...] = ()
    netdevice: str = "user"

    def as_job_context(self) -> dict:
        """The `context:` block of a job, so a LAVA server renders the same device."""
        # no_kvm: the guest is emulated (TCG) whatever the worker has; without it TuxRun's
        # qemu template adds -enable-kvm, which QEMU refuses beside -accel tcg.
        return {"arch": self.arch, "cpu": self.cpu, "machine": self.machine, "memory": self.memory,
                "netdevice": self.netdevice, "no_kvm": True, "extra_options": list(self.extra_options)}


@dataclass(frozen=True)
class ServerConfig:
    """What a lab knows about one real arm64 server (its device dictionary's variables)."""

    hostname: str = "arm64-server-01"
    connection_command: str = "telnet localhost 7001"
    power_on_command: str = "ipmitool -I lanplus -H arm64-server-01-bmc -U lava -E chassis power on"
    power_off_command: str = "ipmitool -I lanplus -H arm64-server-01-bmc -U lava -E chassis power off"
    hard_reset_command: str = "ipmitool -I lanplus -H arm64-server-01-bmc -U lava -E chassis power cycle"
    console_device: str = "ttyAMA0"
    baud_rate: int = 115200
    kernel_args: tuple[str, ...] = field(default_factory=tuple)


def constants() -> dict:
    """base.jinja2's `constants:` block with its defaults (what a non-u-boot boot reads)."""
    return {"posix": {"lava_test_sh_cmd": "/bin/sh", "lava_test_results_dir": "/lava-%s",
                      "lava_test_shell_file": "~/.bashrc"},
            "grub": {"interrupt-prompt": "for a command-line", "interrupt-character": "c",
                     "interrupt-newline": False, "error-messages": ["error: missing (.*) symbol."]},
            "grub-efi": {"interrupt-prompt": "for a command-line", "interrupt-character": "c",
                         "error-messages": ["Undefined OpCode Exception PC at", "Synchronous Exception at",
                                            "error: missing (.*) symbol."]},
            "shutdown-message": "The system is going down for reboot NOW",
            "kernel-start-message": "Linux version [0-9]",
            "default-shell-prompt": "lava-test: # ",
            "spawn_maxread": "4092",
            "failure_retry": 1,
            "boot_retry": None}


def timeouts() -> dict:
    """base.jinja2's default per-action and per-connection timeouts (the ones our jobs meet)."""
    minutes = {"apply-overlay-image": 2, "download-retry": 5, "http-download": 5, "lava-test-shell": 3,
               "nfs-deploy": 10, "bootloader-commands": 3, "auto-login-action": 2, "bootloader-action": 3,
               "bootloader-retry": 3, "boot-qemu-image": 2, "boot-image-retry": 2}
    seconds = {"power-off": 10, "bootloader-interrupt": 30, "umount-retry": 45, "pdu-reboot": 30,
               "reset-device": 30}
    return {"actions": {**{k: {"minutes": v} for k, v in minutes.items()},
                        **{k: {"seconds": v} for k, v in seconds.items()}},
            "connections": {"bootloader-commands": {"seconds": 30}, "auto-login-action": {"minutes": 2},
                            "bootloader-interrupt": {"seconds": 30}, "lava-test-shell": {"seconds": 10}}}


def qemu_options(ctx: QemuContext) -> list[str]:
    """qemu.jinja2's `options:` for an arm64 context."""
    return [f"-cpu {ctx.cpu}", f"-machine {ctx.machine}", "-nographic",
            f"-net nic,model=virtio,macaddr={QEMU_MAC} -net {ctx.netdevice}", f"-m {ctx.memory}", "-monitor none"]


def qemu(ctx: QemuContext) -> dict:
    """The device dictionary of LAVA's `qemu` device type rendered for ctx (arm64 only:
    the jobs we write boot arm64 guests)."""
    if ctx.arch not in ("arm64", "aarch64"):
        raise ValueError(f"dmtbench's LAVA jobs boot arm64 guests, not {ctx.arch}")
    params = {"command": "qemu-system-aarch64",
              "boot_options": {"root": "/dev/vda2 rw rootwait", "console": "ttyAMA0 115200", "ip": "dhcp",
                               "mem": "1024M"},
              "options": qemu_options(ctx)}
    if ctx.extra_options:
        params["extra"] = list(ctx.extra_options)
    return {"device_type": "qemu", "constants": constants(), "parameters": {"pass": None},
            "available_architectures": ["arm64", "arm", "aarch64", "amd64", "x86_64"],
            "actions": {"deploy": {"connections": {"serial": None, "lxc": None},
                                   "methods": {"nfs": None, "lxc": None,
                                               "image": {"parameters": {"guest": {"size": 512, "interface": "ide",
                                                                                  "driveid": "lavatest"}}}}},
                        "boot": {"connections": {"serial": None, "ssh": None, "lxc": None},
                                 "methods": {"minimal": None, "qemu": {"parameters": params}}}},
            "timeouts": timeouts()}


def server(cfg: ServerConfig) -> dict:
    """A real arm64 server's dictionary in base-grub.jinja2's style: grub loads the kernel
    and our ramdisk over tftp (or boots an nfs root); power and console from the lab."""
    console = f"console={cfg.console_device},{cfg.baud_rate}"
    extra = " ".join(cfg.kernel_args)
    net = ["net_bootp"]
    ramdisk = [*net, "insmod linux", "insmod tftp",
               f"linux (tftp,{{SERVER_IP}})/{{KERNEL}} {console} ip=dhcp {extra}".rstrip(),
               "initrd (tftp,{SERVER_IP})/{RAMDISK}", "boot"]
    nfs = [*net, f"linux (tftp,{{SERVER_IP}})/{{KERNEL}} {console} root=/dev/nfs rw "
                 f"nfsroot={{NFS_SERVER_IP}}:{{NFSROOTFS}},tcp,hard ip=dhcp {extra}".rstrip(),
           "initrd (tftp,{SERVER_IP})/{RAMDISK}", "boot"]
    return {"device_type": "arm64-server", "hostname": cfg.hostname, "constants": constants(),
            "parameters": {"pass": None},
            "commands": {"connect": cfg.connection_command, "hard_reset": cfg.hard_reset_command,
                         "power_off": cfg.power_off_command, "power_on": cfg.power_on_command},
            "actions": {"deploy": {"connections": {"serial": None, "lxc": None},
                                   "methods": {"tftp": None, "nbd": None, "lxc": None}},
                        "boot": {"connections": {"serial": None, "lxc": None},
                                 "methods": {"minimal": None,
                                             "grub": {"parameters": {"bootloader_prompt": "grub>",
                                                                     "needs_interrupt": True},
                                                      "ramdisk": {"commands": ramdisk},
                                                      "nfs": {"commands": nfs}}}}},
            "timeouts": timeouts()}
