"""This server's kernels: tracking, attribution, tokens and reports, the provisioner, enforcement."""
