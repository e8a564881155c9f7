"""The peer API over gRPC (cluster mode): petitions to the master and worker lists for
a new master's rebuild. Forwarded calls need no API of their own: they travel on the
client API's ``Session`` stream, marked with the forwarding node's epoch and hops.
"""

from __future__ import annotations

from typing import Any

from aqnode import errors
from aqnode.cluster.member import GroupMember
from aqnode.supervisor.grpc_api import abort, authenticate
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc

MAX_PETITION_KEYS = 10_000  #: entity keys one petition may ask about


class AqPeerService(pb_grpc.AqPeerServicer):
    def __init__(self, member: GroupMember, auth_token: str | None) -> None:
        self._member = member
        self._token = auth_token

    async def Petition(self, request: pb.PetitionRequest, context: Any) -> pb.PetitionReply:
        await authenticate(context, self._token)
        keys = list(request.entity_keys)
        if len(keys) > MAX_PETITION_KEYS:
            await abort(
                context,
                errors.ValidationFailed(
                    f"a petition asked about {len(keys)} entities, over {MAX_PETITION_KEYS}",
                    field="entity_keys",
                ).to_dict(),
            )
        try:
            epoch, homes = self._member.petition(request.epoch, keys)
        except errors.AqError as exc:
            await abort(context, exc.to_dict())
            raise  # abort raises; this keeps type checkers sure nothing follows
        return pb.PetitionReply(
            epoch=epoch,
            homes=[pb.Home(entity_key=k, server_id=s, address=a) for k, s, a in homes],
        )

    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: Any
    ) -> pb.ListWorkersReply:
        await authenticate(context, self._token)
        try:
            epoch, keys = await self._member.list_workers(request.epoch, request.from_server_id)
        except errors.AqError as exc:
            await abort(context, exc.to_dict())
            raise
        return pb.ListWorkersReply(epoch=epoch, server_id=self._member.server_id, entity_keys=keys)
