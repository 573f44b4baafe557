"""Build the stand-in SageMaker TensorFlow training images (and the TF Serving inference image),
offline, tagged with the ECR URIs that the SageMaker Python SDK resolves, so that local mode
(``instance_type="local"``) runs them.

  python containers/build_images.py [--only training-2.19-py312 inference-2.19 ...]

1. A Debian bookworm base image from Debian's packages (debootstrap --variant=minbase, then
   ``docker import``): no registry is needed.
2. Per image: the Python of the real image (same minor version) copied from pyenv, and a
   wheelhouse made on this machine with that interpreter (pip's cache makes a rebuild cheap),
   so ``docker build`` needs no PyPI access; Horovod is compiled inside the image.
3. The inference image (``Dockerfile.inference``): the same base, Python 3.12 and TensorFlow 2.20
   (the version of the TF Serving 2.20 image it stands in for) with gunicorn and falcon, and
   ``workshop/serving/tfs_standin.py``, run by its ``serve`` command.
4. Each image is labelled with a fingerprint of everything it is built from; when the tagged
   image already carries it, nothing is done (a second run takes seconds).

A user with ECR access pulls the real images under the same names; these are not them (see the
README's "Local mode" section for what differs).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = ROOT / "build" / "images"
BASE_TAG = "workshop/debian-bookworm:minbase"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
FINGERPRINT_LABEL = "workshop.fingerprint"
REGION = "us-east-1"  # the notebooks' default region for local mode

# What the real images carry beyond TF and Python (platform-facts.md): Horovod by TF version.
HOROVOD = {"2.12": "0.27.0", "2.11": "0.26.1"}


def training_images():
    """{name: (TF version, py version, pyenv minor version, Horovod version or None, tag)}, one
    per image an entry point of the registry (code/phase0/workshop/entry_points.py) names."""
    sys.path.insert(0, str(ROOT / "code" / "phase0"))
    from workshop import images
    from workshop.entry_points import ENTRY_POINTS

    return {f"training-{e.framework_version}-{e.py_version}":
            (e.framework_version, e.py_version, e.py_version[2] + "." + e.py_version[3:],
             HOROVOD.get(e.framework_version),
             images.uri(e.image_tags[1], REGION) if e.image_tags
             else image_uri(e.framework_version, e.py_version)) for e in ENTRY_POINTS}


def inference_images():
    """{name: (pyenv minor version, tag)}: TF Serving 2.20, the supported inference image."""
    from workshop import images

    return {"inference-2.20": ("3.12", images.uri(images.SERVING_2_20_CPU, REGION))}


def image_uri(framework_version, py_version):
    """The tag the SDK resolves for a CPU local-mode job of an image it knows (2.11, 2.12)."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker import image_uris

    return image_uris.retrieve("tensorflow", region=REGION, version=framework_version,
                               py_version=py_version, instance_type="local",
                               image_scope="training")


IMAGES = training_images()
INFERENCE_IMAGES = inference_images()
# The learner's set-up path (tests/test_notebook_instance.py): {name: (kernel Python, tag)}.
NOTEBOOK_INSTANCE_IMAGES = {"notebook-instance": ("3.10", "workshop/notebook-instance:standin")}
STANDIN = ROOT / "code" / "phase0" / "workshop" / "serving" / "tfs_standin.py"


def run(command, **kwargs):
    print("+ " + " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, **kwargs)


def docker_output(*args):
    out = subprocess.run(["docker", *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_base():
    image_id = docker_output("image", "inspect", "--format", "{{.Id}}", BASE_TAG)
    if image_id:
        return image_id
    if not shutil.which("debootstrap"):
        sys.exit("debootstrap is missing: apt-get install debootstrap (make local-images does)")
    BUILD.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=BUILD))
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR],
            stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "-", BASE_TAG], stdin=tar.stdout)
        if tar.wait() != 0:
            sys.exit("tar of the debootstrap root failed")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return docker_output("image", "inspect", "--format", "{{.Id}}", BASE_TAG)


def find_python(minor):
    """The newest pyenv interpreter of a minor version, e.g. 3.10 -> ~/.pyenv/versions/3.10.13."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted((p for p in root.glob(f"{minor}.*") if p.name[len(minor) + 1:].isdigit()),
                   key=lambda p: int(p.name.rsplit(".", 1)[1]))
    if not found:
        sys.exit(f"Python {minor} is needed for its image: `pyenv install {minor}` "
                 f"(looked in {root})")
    return found[-1]


def build_if_changed(name, tag, parts, fill_context, build_args):
    """Build ``tag`` from build/images/<name>/ unless the tagged image already carries the
    fingerprint of ``parts`` (what it is built from); ``fill_context(folder)`` lays out the build
    folder. Returns (tag, seconds, "built" or "up to date")."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    wanted = digest.hexdigest()[:16]
    have = docker_output("image", "inspect", "--format",
                         "{{index .Config.Labels \"%s\"}}" % FINGERPRINT_LABEL, tag)
    if have == wanted:
        return tag, 0.0, "up to date"
    started = time.monotonic()
    context = BUILD / name
    shutil.rmtree(context, ignore_errors=True)
    (context / "wheels").mkdir(parents=True)
    try:
        fill_context(context)
        args = [arg for key, value in build_args.items()
                for arg in ("--build-arg", f"{key}={value}")]
        run(["docker", "build", "--network", "host", "--tag", tag,
             "--label", f"{FINGERPRINT_LABEL}={wanted}", *args, context])
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag, time.monotonic() - started, "built"


def copy_python(python, dest, packages=True):
    """A pyenv interpreter; without ``packages``, none of what was pip-installed into it here
    (a venv brings pip through ensurepip)."""
    # _sandboxing_*: this sandbox's certificate hook, not part of the interpreter
    skip = ["_sandboxing_*", "__pycache__"] + ([] if packages else ["site-packages"])
    shutil.copytree(python, dest, symlinks=True, ignore=shutil.ignore_patterns(*skip))
    if not packages:
        for site in python.glob("lib/python3.*/site-packages"):
            (dest / site.relative_to(python)).mkdir()


def wheelhouse(python, requirements, context):
    run([python / "bin" / "python3", "-m", "pip", "wheel", "-q", "--wheel-dir",
         context / "wheels", "-r", requirements])


def build_training(name, base_id):
    _, _, minor, horovod, tag = IMAGES[name]
    python = find_python(minor)
    requirements = HERE / f"{name}.txt"

    def fill(context):
        run([python / "bin" / "python3", "-m", "pip", "wheel", "-q", "--use-pep517",
             "--wheel-dir", context / "wheels", "-r", requirements])
        if horovod:  # compiled inside the image, against its TensorFlow
            run([python / "bin" / "python3", "-m", "pip", "download", "-q", "--no-deps",
                 "--no-binary", ":all:", "--dest", context / "wheels", f"horovod=={horovod}"])
        shutil.copy(HERE / "Dockerfile.training", context / "Dockerfile")
        shutil.copy(requirements, context / "requirements.txt")
        copy_python(python, context / "python")

    parts = ((HERE / "Dockerfile.training").read_bytes(), requirements.read_bytes(),
             python.name.encode(), str(horovod).encode(), base_id.encode())
    return build_if_changed(name, tag, parts, fill, {"PYENV_VERSION": python.name,
                                                     "HOROVOD_VERSION": horovod or ""})


def build_inference(name, base_id):
    """The TF Serving stand-in image: the Debian base, its Python, TensorFlow and the stand-in."""
    minor, tag = INFERENCE_IMAGES[name]
    python = find_python(minor)
    requirements = HERE / f"{name}.txt"

    def fill(context):
        wheelhouse(python, requirements, context)
        shutil.copy(HERE / "Dockerfile.inference", context / "Dockerfile")
        shutil.copy(requirements, context / "requirements.txt")
        shutil.copy(STANDIN, context / "tfs_standin.py")
        copy_python(python, context / "python")

    parts = ((HERE / "Dockerfile.inference").read_bytes(), requirements.read_bytes(),
             STANDIN.read_bytes(), python.name.encode(), base_id.encode())
    return build_if_changed(name, tag, parts, fill, {"PYENV_VERSION": python.name})


def build_notebook_instance(name, base_id):
    """The stand-in notebook instance: a Python that is not 3.11 as its conda_python3 kernel,
    and python3.11 where Amazon Linux 2023's package puts it."""
    minor, tag = NOTEBOOK_INSTANCE_IMAGES[name]
    kernel_python, python311 = find_python(minor), find_python("3.11")
    requirements = HERE / f"{name}.txt"
    dockerfile = HERE / "Dockerfile.notebook-instance"

    def fill(context):
        wheelhouse(kernel_python, requirements, context)
        shutil.copy(dockerfile, context / "Dockerfile")
        shutil.copy(requirements, context / "requirements.txt")
        copy_python(kernel_python, context / "kernel-python", packages=False)
        copy_python(python311, context / "python3.11", packages=False)

    parts = (dockerfile.read_bytes(), requirements.read_bytes(), kernel_python.name.encode(),
             python311.name.encode(), base_id.encode())
    return build_if_changed(name, tag, parts, fill, {"KERNEL_PYTHON": kernel_python.name,
                                                     "PYTHON311": python311.name})


def build(name, base_id):
    if name in INFERENCE_IMAGES:
        return build_inference(name, base_id)
    if name in NOTEBOOK_INSTANCE_IMAGES:
        return build_notebook_instance(name, base_id)
    return build_training(name, base_id)


def build_order(names):
    """Training images first, then the inference image."""
    return sorted(names, key=lambda n: (n in INFERENCE_IMAGES, n))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = sorted({**IMAGES, **INFERENCE_IMAGES, **NOTEBOOK_INSTANCE_IMAGES})
    parser.add_argument("--only", nargs="*", choices=names, default=names)
    args = parser.parse_args(argv)
    started = time.monotonic()
    base_id = ensure_base()
    print(f"base image {BASE_TAG}: {time.monotonic() - started:.0f} s")
    rows = [build(name, base_id) for name in build_order(args.only)]
    print(f"\n{'image':<104} {'seconds':>8} {'size':>8}  state")
    for tag, seconds, state in rows:
        size = docker_output("image", "inspect", "--format", "{{.Size}}", tag)
        size_text = f"{int(size) / 1e9:.2f} GB" if size else "?"
        print(f"{tag:<104} {seconds:>8.0f} {size_text:>8}  {state}")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
