"""dmtbench as LAVA jobs: test definitions' helpers, job writer, dispatcher runs, results home.

Each module's name says where it runs:
  L0 (this machine or a LAVA worker's submitter)
    l0_image     one merged newc initramfs (base + suite + job) that LAVA can append its overlay to
    l0_device    the device dictionaries lava-run needs (qemu arm64 TCG / KVM host, a real server)
    l0_job       `python -m guestkit lava job`: the job YAML of kind a, b or c and its image
    l0_run       `python -m guestkit lava run`: lava-run (or TuxRun) with the local dispatcher
    l0_collect   `python -m guestkit lava collect`: the framed raw results out of a job log
    l0_lab       `python -m guestkit lab --lava`: one LAVA job per host kernel, the lab's report
    l0_command   the `lava` command's argument parsing
  L1 (inside the LAVA guest, from the test definitions in lava/)
    guest_convert  KTAP and pyperf JSON -> lava-test-case calls, framed raw files (standard library only)
    l1_steps       the test definitions' steps: probe / run, then convert and send home
"""
