"""`python -m backtrans deploy --space OWNER/NAME`: create or update the Hugging Face Space.

The plan comes from `space.yaml` (which secrets and variables the Space needs) and the environment
(their values). `--dry-run` prints the plan; secret values are never printed, only whether they are set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# What the Space needs from this repository; venvs, state and caches stay behind.
UPLOAD_PATTERNS = ["app.py", "README.md", "requirements.txt", "space.yaml", "backtrans/**/*", "prompts/**/*",
                   "docs/*.png"]
IGNORE_PATTERNS = ["**/__pycache__/**", "**/*.pyc", "backtrans/local/argilla_server_compat.py"]


class DeployError(RuntimeError):
    pass


@dataclass
class DeployPlan:
    space_id: str
    hardware: str
    secrets: dict[str, bool] = field(default_factory=dict)  # name -> set in the environment
    variables: dict[str, str] = field(default_factory=dict)
    missing_required: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"Space: https://huggingface.co/spaces/{self.space_id} (sdk gradio, hardware {self.hardware})"]
        lines += [f"  secret   {name}: {'from the environment' if present else 'NOT SET'}"
                  for name, present in self.secrets.items()]
        lines += [f"  variable {name}={value}" for name, value in self.variables.items()]
        more = " ..." if len(self.files) > 8 else ""
        lines.append(f"  upload {len(self.files)} files: {', '.join(self.files[:8])}{more}")
        if self.missing_required:
            lines.append(f"  missing required: {', '.join(self.missing_required)}")
        return "\n".join(lines)


def _files() -> list[str]:
    from fnmatch import fnmatch

    found = set()
    for pattern in UPLOAD_PATTERNS:
        for path in ROOT.glob(pattern):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not any(fnmatch(relative, ignore) for ignore in IGNORE_PATTERNS):
                found.add(relative)
    return sorted(found)


def plan(space_id: str, spec_path: Path = ROOT / "space.yaml", env: dict | None = None) -> DeployPlan:
    env = dict(os.environ if env is None else env)
    if space_id.count("/") != 1 or not all(space_id.split("/")):
        raise DeployError(f"--space should be OWNER/NAME, got {space_id!r}")
    spec = yaml.safe_load(spec_path.read_text())
    result = DeployPlan(space_id, spec.get("space", {}).get("suggested_hardware", "cpu-basic"))
    for secret in spec.get("secrets", []):
        result.secrets[secret["name"]] = bool(env.get(secret["name"]))
        if secret.get("required") and not env.get(secret["name"]):
            result.missing_required.append(secret["name"])
    for variable in spec.get("variables", []):
        value = env.get(variable["name"], variable.get("default"))
        if value:
            result.variables[variable["name"]] = str(value)
        elif variable.get("required"):
            result.missing_required.append(variable["name"])
    result.files = _files()
    return result


def deploy(deploy_plan: DeployPlan, token: str | None = None, env: dict | None = None) -> str:
    """Create or update the Space, set its secrets and variables, upload the app."""
    from huggingface_hub import HfApi

    env = dict(os.environ if env is None else env)
    if deploy_plan.missing_required:
        raise DeployError(f"set {', '.join(deploy_plan.missing_required)} in the environment first")
    token = token or env.get("HF_TOKEN")
    if not token:
        raise DeployError("set HF_TOKEN (a write token) to deploy")
    api = HfApi(token=token)
    try:
        api.create_repo(deploy_plan.space_id, repo_type="space", space_sdk="gradio", exist_ok=True,
                        space_hardware=deploy_plan.hardware)
        for name, present in deploy_plan.secrets.items():
            if present:
                api.add_space_secret(deploy_plan.space_id, name, env[name])
        for name, value in deploy_plan.variables.items():
            api.add_space_variable(deploy_plan.space_id, name, value)
        api.upload_folder(repo_id=deploy_plan.space_id, repo_type="space", folder_path=str(ROOT),
                          allow_patterns=deploy_plan.files, commit_message="Deploy backtrans")
    except Exception as exc:  # network, auth and Hub errors alike
        from backtrans.redaction import redact

        raise DeployError(redact(f"deploying to {deploy_plan.space_id} failed: {exc}", token)) from None
    return f"https://huggingface.co/spaces/{deploy_plan.space_id}"
