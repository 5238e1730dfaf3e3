"""guestkit: get dmtbench into a guest (QEMU/KVM), run it there, bring results back."""
