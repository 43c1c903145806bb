"""parkfleet's container images, built without a container engine (``make images``).

The recipe is the Dockerfiles' own (``images/operator/Dockerfile``,
``images/agent/Dockerfile``); the builder reads them, so that the two cannot drift:

1. The ``base`` stage (``FROM debian:bookworm-slim`` and one ``apt-get install``) is made
   with Debian's ``mmdebstrap`` from the same package list (minbase, slimmed as ``-slim``
   is), from this machine's apt sources (:mod:`pfimage.stages`). Cached by its package list.
2. The ``wheels`` stage is made on this machine: the package's wheel, built from the same
   build context (``Dockerfile.dockerignore``), and every dependency's wheel for the base's
   Python and glibc, at the versions installed in the running venv (what the tests ran).
   Nothing is downloaded inside the image.
3. The last stage's instructions run in a chroot of the base, with no network
   (:mod:`pfimage.build`): each ``RUN`` that changes something is a layer, as with docker;
   the rest of the instructions are the image's config.
4. The layers, the config and a manifest are written as an OCI image archive that
   ``ctr images import`` (``pf-controlplane import-image``) reads, named for containerd as
   the chart's default image reference resolves (``docker.io/parkfleet/parkfleet:V``)
   (:mod:`pfimage.layers`).

``hack/images/build.py`` is the command. Root only (mmdebstrap's root mode, chroot, mounts).
"""

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache" / "images"
# What the build writes gets this time (and SOURCE_DATE_EPOCH): equal content, equal digest.
EPOCH = 1704067200


class BuildError(RuntimeError):
    """The Dockerfile asks for what this builder does not do, or a step failed."""


def run(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> str:
    """Runs a build step quietly; its output (the tail) only when it fails.

    Returns:
        What it wrote to stdout and stderr.

    Raises:
        BuildError: It exited with a status other than 0.
    """
    proc = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout
