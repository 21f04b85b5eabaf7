"""Which LLM endpoint a job uses, and whose key pays for it.

Three presets, the same for every face:
- `server`: the endpoint the app was started with (OPENAI_BASE_URL, OPENAI_API_KEY, BACKTRANS_MODEL);
  on a public Space its key serves visitors only if the Space's owner opts in (BACKTRANS_SHARE_SERVER_KEY=1).
- `huggingface`: Hugging Face's OpenAI-compatible inference router, paid by the signed-in visitor's own token.
- `custom`: a base URL and key the visitor types. The server's key is never sent to a URL a visitor chose, and on
  a Space the URL must name a public host (backtrans/egress.py): checked here, and again at every connect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from backtrans import egress
from backtrans.llm import LLMSettings
from backtrans.owners import on_space

SERVER = "server"
HUGGINGFACE = "huggingface"
CUSTOM = "custom"
PRESETS = {
    SERVER: "This app's model",
    HUGGINGFACE: "Hugging Face (your token)",
    CUSTOM: "Custom OpenAI-compatible endpoint",
}
HF_ROUTER_URL = "https://router.huggingface.co/v1"
# A documented default, not fetched: the router's catalogue changes and nothing is fetched at import.
HF_ROUTER_MODELS = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "meta-llama/Llama-3.3-70B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
)


class BackendError(ValueError):
    """A backend the visitor cannot use as asked. The message is safe to show."""


@dataclass(frozen=True)
class Choice:
    settings: LLMSettings
    server_pays: bool  # the app's own key: quotas apply


def server_key_shared() -> bool:
    """Off a Space the app is its user's own tool; on a Space the owner must opt in to pay for visitors."""
    flag = os.environ.get("BACKTRANS_SHARE_SERVER_KEY")
    return (flag.lower() in ("1", "true", "yes")) if flag else not on_space()


def hf_router_url() -> str:
    return os.environ.get("BACKTRANS_HF_ROUTER_URL") or HF_ROUTER_URL


def choose(preset: str, *, model: str = "", base_url: str = "", api_key: str = "", hf_token: str | None = None,
           concurrency: int = 16) -> Choice:
    """Settings for one job. `hf_token`: the signed-in visitor's OAuth token, if any."""
    model, base_url, api_key = (model or "").strip(), (base_url or "").strip(), (api_key or "").strip()
    if preset == HUGGINGFACE:
        if not hf_token:
            raise BackendError("Sign in with Hugging Face to judge with your own token.")
        return Choice(LLMSettings(base_url=hf_router_url(), api_key=hf_token, model=model or HF_ROUTER_MODELS[0],
                                  concurrency=concurrency), server_pays=False)
    if preset == CUSTOM:
        if not base_url:
            raise BackendError("Give the base URL of an OpenAI-compatible endpoint (…/v1).")
        if not base_url.lower().startswith(("http://", "https://")):
            raise BackendError("The base URL must start with http:// or https://.")
        if not model:
            raise BackendError("Name the model to use at that endpoint.")
        public_only = egress.applies()
        if public_only:
            try:
                egress.check_url(base_url)
            except egress.EgressRefused as exc:
                raise BackendError(str(exc)) from None
        # No fallback to OPENAI_API_KEY here: that would hand the server's key to a URL a visitor typed.
        return Choice(LLMSettings(base_url=base_url, api_key=api_key or "none", model=model,
                                  concurrency=concurrency, public_only=public_only), server_pays=False)
    if preset != SERVER:
        raise BackendError(f"Unknown backend {preset[:40]!r}: choose one of {', '.join(PRESETS)}.")
    if not server_key_shared():
        raise BackendError("This Space does not lend its own model to visitors: sign in and use your Hugging Face "
                           "token, or give your own endpoint.")
    settings = LLMSettings.from_env(model=model or None, concurrency=concurrency)
    if not settings.model:
        raise BackendError("This app has no default model (BACKTRANS_MODEL): name one.")
    return Choice(settings, server_pays=True)
