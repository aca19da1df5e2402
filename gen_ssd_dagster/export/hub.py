"""Pushing an exported folder to the Hugging Face hub: opt-in, the token read from an environment
variable at the moment of the call and never logged, printed or stored."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError, GenSSDError

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubPushError(GenSSDError):
    """The hub refused the upload or could not be reached (offline, no network, a bad token)."""


@dataclass(frozen=True)
class HubTarget:
    """repo_id: "<user or org>/<name>" of the dataset repository. token_env: the environment variable
    holding a write token. private: create the repository private (when it does not exist yet)."""

    repo_id: str
    token_env: str = "HF_TOKEN"
    private: bool = True

    def validate(self) -> None:
        if not _REPO_ID.match(self.repo_id or ""):
            raise ConfigError(f"push_to_hub.repo_id must look like 'user/name', got {self.repo_id!r}")
        if not self.token_env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.token_env):
            raise ConfigError(f"push_to_hub.token_env must name an environment variable, got {self.token_env!r}")

    def token(self) -> str:
        value = os.environ.get(self.token_env, "").strip()
        if not value:
            raise ConfigError(f"push_to_hub: the environment variable {self.token_env} (push_to_hub.token_env) is "
                              "not set: export a hub write token there")
        return value


def push(folder: Path, target: HubTarget, digest: str) -> str:
    """Upload `folder` to the dataset repository `target.repo_id`; returns its URL."""
    from huggingface_hub import HfApi

    target.validate()
    token = target.token()
    log.info("pushing %s to the hub dataset %s (token from $%s)", folder, target.repo_id, target.token_env)
    api = HfApi(token=token)
    try:
        api.create_repo(target.repo_id, repo_type="dataset", private=target.private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=target.repo_id, repo_type="dataset",
                          commit_message=f"gen-ssd export, digest {digest}")
    except Exception as exc:  # one line naming the repository; the token masked, should a client echo it
        raise HubPushError(f"push of {folder} to the hub dataset {target.repo_id} failed: "
                           f"{type(exc).__name__}: {str(exc).replace(token, '***')}") from None
    return f"https://huggingface.co/datasets/{target.repo_id}"
