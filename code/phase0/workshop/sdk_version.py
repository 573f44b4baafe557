"""Which SageMaker Python SDK this kernel has, and a clear stop when a notebook needs the other.

Notebooks 0.0-5.0 use SDK v2 (``sagemaker.tensorflow.TensorFlow``), notebook 6.0 uses SDK v3
(``ModelTrainer``). Both install the import name ``sagemaker`` and cannot share an environment,
so each has its own kernel (``make setup`` installs both). Imports nothing from ``sagemaker``:
it must work whichever SDK, or none, is installed.
"""

import importlib.metadata

KERNELS = {2: ("cifar-workshop", "Python 3 (CIFAR-10 workshop, TF 2.15)", "requirements.txt"),
           3: ("cifar-workshop-sdk3", "Python 3 (CIFAR-10 workshop, SageMaker SDK v3)",
               "requirements-sdk3.txt")}
V3_PACKAGES = "sagemaker sagemaker-core sagemaker-train sagemaker-serve sagemaker-mlops"


class WrongSDK(RuntimeError):
    """This kernel's SageMaker SDK is not the one the notebook is written for."""


def installed_major():
    """2 or 3 (the major version of the installed ``sagemaker``), or None when it is missing."""
    try:
        return int(importlib.metadata.version("sagemaker").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return None


def require(major, missing_ok=False):
    """Return quietly when this kernel has SageMaker SDK v<major> (or none, with missing_ok);
    else raise WrongSDK saying which kernel to pick or what to install."""
    found = installed_major()
    if found == major or (found is None and missing_ok):
        return found
    kernel, display_name, requirements = KERNELS[major]
    built_by = {2: "notebook 0.0 builds it, `make setup` too",
                3: "notebook 0.0 builds it with INSTALL_SDK3 = True, `make setup` too"}[major]
    pick = (f"Pick the kernel \"{display_name}\" ({kernel}; {built_by}), or "
            f"install {requirements} into a fresh environment")
    if found is None:
        raise WrongSDK(f"This notebook needs the SageMaker Python SDK v{major}, and this kernel "
                       f"has no `sagemaker` package. {pick}.")
    why = {2: "v3 has no Estimator classes: `import sagemaker.tensorflow` fails there. "
              "Notebook 6.0 runs the same jobs with v3's ModelTrainer.",
           3: "it uses ModelTrainer and v3's resource classes (sagemaker.train, sagemaker.core), "
              "which v2 does not have."}[major]
    undo = (f" (v2 and v3 cannot share an environment: `pip uninstall -y {V3_PACKAGES}` "
            f"before installing v2 over v3)" if major == 2 else "")
    raise WrongSDK(f"This notebook is written for the SageMaker Python SDK v{major}, but this "
                   f"kernel has v{found} ({importlib.metadata.version('sagemaker')}): {why} "
                   f"{pick}{undo}.")
