"""The stage-2 lab: real Debian kernels as the KVM host under test; their own KVM decides the stage 2.

Each module's name says where it runs:
  L0 (this machine, `python -m guestkit lab`)
    l0_command   the command: one emulated-host boot per kernel, results home, table / JSON
    l0_table     the three sources per backing (prediction, stage-2 read, probe class), the
                 cross-kernel table, --detail, timing ratios
    l0_plot      --plot: backings x host kernels, coloured by the stage-2 attribute read
    l0_hostboot  what an emulated KVM host's boot adds to the job (VFIO modules, vfio-pci bind)
    l0_l2image   `--guest linux`: the QEMU, kernel and initramfs the host needs to boot an L2
  L1 (inside the emulated KVM host, started by guestkit's agent)
    l1_runner    `--guest payload`: every probe and timing case of this host, one JSON file
    l1_fast      the in-process `--fast` timings, every backing of the host interleaved by rounds
    l1_l2driver  `--guest linux`: boots Debian L2 guests with the BAR passed through
    l1_vmfd      `--guest linux`: the stage-2 read of the inner QEMU's VM (pidfd_getfd)
  L2 (the guest under test) runs only bench: the kvm target's payload or `bench probe`.
"""
