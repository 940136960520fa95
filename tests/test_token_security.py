"""API tokens at rest: never in plaintext in the database or the logs; rotate-key while serving."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from sidecar.tokens import key_id, read_keys
from tests.conftest import Sidecar, StartServer, StartSidecar
from tests.helpers import BIN
from tests.upstreams import serve_upstream

TOKEN = "sk-at-rest-4f9a2c7e1b3d5f60"
OTHER_TOKEN = "sk-second-model-99887766"


def test_token_is_never_stored_or_logged_in_plaintext(start_sidecar: StartSidecar) -> None:
    import grpc

    from gitlab.duo.routing.v1 import admin_pb2_grpc

    sidecar = start_sidecar("self_managed", extra_config='[log]\nlevel = "debug"\n')
    with grpc.insecure_channel(sidecar.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        model = admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name="vLLM",
                    family=types_pb2.MODEL_FAMILY_MISTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint="http://127.0.0.1:9/v1",
                    identifier="custom_openai/m",
                    api_token=TOKEN,
                )
            )
        ).self_hosted_model
        admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))  # fails: nothing listens
        events = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest())
    assert TOKEN not in str(events)
    data = sidecar.config.parent / "data"
    stored = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())
    assert TOKEN.encode() not in stored
    assert TOKEN.encode() not in sidecar.log.read_bytes()
    with sqlite3.connect(data / "sidecar.db") as db:
        ((key, ciphertext),) = db.execute("SELECT api_token_key_id, api_token_ciphertext FROM self_hosted_models")
    assert key == key_id(read_keys(data / "token.key")[0]) and len(ciphertext) > len(TOKEN)
    assert oct((data / "token.key").stat().st_mode & 0o777) == "0o600"


async def _create(sidecar: Sidecar, name: str, url: str, token: str) -> str:
    reply = await sidecar.admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(
                name=name,
                family=types_pb2.MODEL_FAMILY_MISTRAL,
                platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                endpoint=f"{url}/v1",
                identifier=f"custom_openai/{name}",
                api_token=token,
            )
        )
    )
    model_id: str = reply.self_hosted_model.id
    return model_id


async def _reaches_upstream(sidecar: Sidecar, model_id: str) -> None:
    result = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model_id))
    assert result.success, result.error_message


@pytest.mark.asyncio
async def test_rotate_key_while_serving_then_without_the_old_key(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with serve_upstream() as upstream:

        def bearer() -> str:
            return upstream.requests[-1].headers.get("Authorization", "")

        sidecar = await start_server("self_managed", data_dir=data)
        first = await _create(sidecar, "first", upstream.url, TOKEN)
        second = await _create(sidecar, "second", upstream.url, OTHER_TOKEN)
        old_key = read_keys(data / "token.key")

        config = tmp_path / "sidecar.toml"
        config.write_text(f'[storage]\npath = "{data / "sidecar.db"}"\n')
        process = await asyncio.create_subprocess_exec(
            str(BIN / "duo-sidecar"), "rotate-key", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output = (await process.communicate())[0].decode()
        assert process.returncode == 0, output
        assert "re-encrypted 2 API tokens" in output

        new_key = read_keys(data / "token.key")
        assert len(new_key) == 1 and new_key != old_key
        with sqlite3.connect(data / "sidecar.db") as db:
            key_ids = {row[0] for row in db.execute("SELECT api_token_key_id FROM self_hosted_models")}
        assert key_ids == {key_id(new_key[0])}

        # The running sidecar keeps working, and a token it stores now uses the new key.
        await _reaches_upstream(sidecar, first)
        assert bearer() == f"Bearer {TOKEN}"
        third = await _create(sidecar, "third", upstream.url, "sk-after-rotation-0001")
        await sidecar.server.stop()

        # Restarted with only the new key: every token still decrypts.
        restarted = await start_server("self_managed", data_dir=data)
        for model_id, token in ((first, TOKEN), (second, OTHER_TOKEN), (third, "sk-after-rotation-0001")):
            await _reaches_upstream(restarted, model_id)
            assert bearer() == f"Bearer {token}"
        events = await restarted.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(resource_prefix="tokenKey"))
        assert [e.action for e in events.audit_events] == ["RotateTokenKey"]
        assert TOKEN not in str(events)
        answer = await restarted.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
        assert answer.config_version  # serving


@pytest.mark.asyncio
async def test_lost_key_file_fails_clearly_and_a_new_token_recovers(start_server: StartServer, tmp_path: Path) -> None:
    import grpc

    from tests.helpers import error_details

    data = tmp_path / "data"
    sidecar = await start_server("self_managed", data_dir=data)
    async with serve_upstream() as upstream:
        model_id = await _create(sidecar, "vllm", upstream.url, TOKEN)
        await sidecar.server.stop()
        (data / "token.key").unlink()  # lost with a volume, or a backup restored without it

        restarted = await start_server("self_managed", data_dir=data)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await restarted.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model_id))
        details = error_details(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TOKEN_KEY_UNAVAILABLE")
        assert "--api-token-file" in details.message and TOKEN not in details.message

        from google.protobuf import field_mask_pb2

        await restarted.admin.UpdateSelfHostedModel(
            admin_pb2.UpdateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(id=model_id, api_token=OTHER_TOKEN),
                update_mask=field_mask_pb2.FieldMask(paths=["api_token"]),
            )
        )
        await _reaches_upstream(restarted, model_id)
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {OTHER_TOKEN}"
