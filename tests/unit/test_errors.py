"""One hierarchy, one map: every error the project raises on purpose has its status code, and
anything else, a bug, is INTERNAL with a generic message, wherever it happens."""

import grpc
import pytest

from core import errors
from service.errors import STATUS_CODES, status_for
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from tests.service_helpers import fake_model, running_server, server_config


def test_every_error_of_the_hierarchy_has_its_code():
    hierarchy = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.ProtoLMError)}
    mapped = {cls for cls, _ in STATUS_CODES}
    # DataError stops training; RemoteError is the client's: neither reaches the server's map
    assert hierarchy - {errors.ProtoLMError, errors.DataError, errors.RemoteError} == mapped
    assert status_for(errors.OverloadedError("full")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(errors.NotReadyError("draining")) == grpc.StatusCode.UNAVAILABLE
    assert status_for(errors.InvalidInputError("empty")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(KeyError("bug")) == grpc.StatusCode.INTERNAL


async def test_a_bug_during_reload_is_internal_and_the_old_model_keeps_serving(tmp_path):
    (tmp_path / "buggy").mkdir()

    def load(path, cfg):
        if path.endswith("buggy"):
            raise KeyError("a bug in the loader")
        return fake_model(cfg, name="original")

    async with running_server(server_config(bundle_dir=str(tmp_path / "current"), admin_without_token=True), load) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        admin, api = pb_grpc.ProtoLMAdminServiceStub(channel), pb_grpc.ProtoLMServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await admin.Reload(pb.ReloadRequest(bundle_dir="buggy"))
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details().startswith("internal error (request id ") and "a bug" not in error.value.details()
        assert (await api.GetModelInfo(pb.GetModelInfoRequest())).model.name == "original"
        await channel.close()
