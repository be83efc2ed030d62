"""GatewayServicer: the gRPC transport of the gateway's operations (admission, then the operation)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.core.wire import REQUEST_ID
from services.gateway.admission import Admission, peer_host
from services.gateway.backends import CallContext
from services.gateway.operations import GatewayOperations


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, operations: GatewayOperations, admission: Admission) -> None:
        self._operations = operations
        self._admission = admission

    async def RouteMessage(
        self, request: gateway_pb2.RouteMessageRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RouteMessageResponse:
        return await self._operations.route_message(request, self._admit(context))

    async def ClassifyTexts(
        self, request: gateway_pb2.ClassifyTextsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ClassifyTextsResponse:
        return await self._operations.classify_texts(request, self._admit(context))

    async def EmbedTexts(
        self, request: gateway_pb2.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedTextsResponse:
        return await self._operations.embed_texts(request, self._admit(context))

    async def DescribeProduct(
        self, request: gateway_pb2.DescribeProductRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DescribeProductResponse:
        return await self._operations.describe_product(request, self._admit(context))

    async def DraftReply(
        self, request: gateway_pb2.DraftReplyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.DraftReplyResponse]:
        async for response in self._operations.draft_reply(request, self._admit(context)):
            yield response

    async def WriteMarketingCopy(
        self, request: gateway_pb2.WriteMarketingCopyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.WriteMarketingCopyResponse]:
        async for response in self._operations.write_marketing_copy(request, self._admit(context)):
            yield response

    async def AnalyzeReviews(
        self, request: gateway_pb2.AnalyzeReviewsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AnalyzeReviewsResponse:
        return await self._operations.analyze_reviews(request, self._admit(context))

    def _admit(self, context: grpc.aio.ServicerContext) -> CallContext:
        call = self._admission.admit(
            dict(context.invocation_metadata() or ()), context.time_remaining(), peer_host(context.peer())
        )
        # In the trailers: they travel with the status, so this costs no extra write (and errors carry it too).
        context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
        return call
