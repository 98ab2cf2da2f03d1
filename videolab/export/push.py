"""``--push_to_hub REPO_ID``: upload an export folder to the Hugging Face Hub (``huggingface_hub.HfApi``).

:func:`check_push` runs with the other settings checks, before any training: the repo id must be valid, the Hub
reachable (``core.hub.hub_reachable``: HF_HUB_OFFLINE unset and huggingface.co answering) and a token known (``hf
auth login`` or ``HF_TOKEN``), each failure one line with the fix. :func:`push_folder` creates the repo if needed
(``--hub_private True``: private) and uploads the folder as one commit.
"""
from __future__ import annotations

from typing import Optional

from videolab.core.errors import UsageError
from videolab.core.hub import hub_reachable


def check_push(repo_id: str) -> None:
    """UsageError unless ``repo_id`` can be uploaded to from here."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"--push_to_hub {repo_id!r} is not a Hub repo id ({str(exc).splitlines()[0][:120]}); use "
                         f"USER/NAME or ORG/NAME") from None
    if "/" not in repo_id:
        raise UsageError(f"--push_to_hub {repo_id!r}: name the owner too, USER/NAME or ORG/NAME")
    if not hub_reachable():
        raise UsageError(f"--push_to_hub {repo_id}: the Hugging Face Hub cannot be reached from here (offline, or "
                         f"HF_HUB_OFFLINE=1); drop --push_to_hub, export with --export_dir and upload the folder "
                         f"later with: hf upload {repo_id} DIR")
    if get_token() is None:
        raise UsageError(f"--push_to_hub {repo_id}: no Hugging Face token; log in with 'hf auth login' or set "
                         f"HF_TOKEN, then run again")


def push_folder(folder: str, repo_id: str, private: bool = False, message: Optional[str] = None) -> str:
    """Create ``repo_id`` (a model repo; ``private`` when new) if it does not exist and upload ``folder`` in one
    commit. Returns the commit's URL."""
    from huggingface_hub import HfApi
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                               commit_message=message or "Upload the model exported by videolab")
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
