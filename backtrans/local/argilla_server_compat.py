"""Runs argilla-server 2.8.0 (or its rq worker) on osmem, an in-memory OpenSearch-compatible engine.

This file runs inside argilla-server's own virtual environment, not ours: it imports nothing from
backtrans. Elasticsearch and OpenSearch cannot be installed on machines without a download site,
and osmem serves everything Argilla needs except painless update scripts and k-NN queries. The
methods below replace exactly the ones that send those, with plain reads and writes.

    python argilla_server_compat.py server --host 127.0.0.1 --port 6900
    python argilla_server_compat.py worker
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

CONFLICT_RETRIES = 20


def _patch() -> None:
    from argilla_server.search_engine import commons
    from argilla_server.search_engine.commons import es_index_name_for_dataset
    from argilla_server.search_engine.opensearch import OpenSearchEngine
    from opensearchpy.exceptions import ConflictError, NotFoundError

    async def modify_document(engine: OpenSearchEngine, index: str, doc_id: str, change) -> None:
        """Read, change and write back a document, guarded by its sequence number.

        Stands in for `_update` with a script, which osmem rejects. The `if_seq_no` guard makes
        concurrent annotators safe: a lost race reads again and retries.
        """
        for _ in range(CONFLICT_RETRIES):
            try:
                current = await engine.client.get(index=index, id=doc_id)
            except NotFoundError:
                return
            source = current["_source"]
            change(source)
            try:
                await engine.client.index(
                    index=index, id=doc_id, body=source, refresh=True,
                    if_seq_no=current["_seq_no"], if_primary_term=current["_primary_term"],
                )
                return
            except ConflictError:
                await asyncio.sleep(0.01)
        raise RuntimeError(f"document {doc_id} kept changing under {CONFLICT_RETRIES} attempts")

    # Upstream: a painless script that replaces the response with the same id. Used by the web UI's
    # submit/draft/discard (POST /records/{id}/responses, PUT /responses/{id}, /me/responses/bulk).
    async def update_record_response(self: OpenSearchEngine, response) -> None:
        record = response.record
        mapped = self._map_record_response_to_es(response)

        def change(source: dict) -> None:
            responses = [r for r in (source.get("responses") or []) if r.get("id") != mapped["id"]]
            source["responses"] = [*responses, mapped]

        await modify_document(self, es_index_name_for_dataset(record.dataset), str(record.id), change)

    # Upstream: a painless script that removes the response with the given id (DELETE /responses/{id}).
    async def delete_record_response(self: OpenSearchEngine, response) -> None:
        record = response.record
        response_id = str(response.id)

        def change(source: dict) -> None:
            source["responses"] = [r for r in (source.get("responses") or []) if str(r.get("id")) != response_id]

        await modify_document(self, es_index_name_for_dataset(record.dataset), str(record.id), change)

    # Upstream: a painless script that removes one key (DELETE /suggestions/{id}).
    async def delete_record_suggestion(self: OpenSearchEngine, suggestion) -> None:
        name = suggestion.question.name

        def change(source: dict) -> None:
            (source.get("suggestions") or {}).pop(name, None)

        index = es_index_name_for_dataset(suggestion.record.dataset)
        await modify_document(self, index, str(suggestion.record_id), change)

    # Upstream: a `knn` query, which osmem does not serve. A filtered search, then cosine similarity
    # here; fine for the dataset sizes a local review server holds.
    async def request_similarity_search(
        self: OpenSearchEngine, index: str, vector_settings, value: list[float], k: int,
        excluded_id=None, query_filters: list[dict] | None = None,
    ) -> dict:
        field = commons.es_field_for_vector_settings(vector_settings)
        must_not = [commons.es_ids_query([str(excluded_id)])] if excluded_id else None
        filters = query_filters or []
        query = commons.es_bool_query(
            must=[commons.es_exists_field_query(field)],
            should=filters or None,
            minimum_should_match=len(filters) if filters else None,
            must_not=must_not,
        )
        found = await self.client.search(index=index, body={"query": query}, _source=[field], size=10_000)
        scored = []
        for hit in found["hits"]["hits"]:
            vector = _get_path(hit.get("_source", {}), field)
            if vector:
                scored.append((_cosine(value, vector), hit["_id"]))
        scored.sort(reverse=True)
        hits = [{"_id": doc_id, "_score": (1 + score) / 2} for score, doc_id in scored[:k]]
        return {"hits": {"total": {"value": len(hits), "relation": "eq"}, "hits": hits}}

    original_map_response = commons.BaseElasticAndOpenSearchEngine._map_record_response_to_es

    # Upstream calls `.items()` on the values, which are None for a discarded response.
    def map_record_response_to_es(response) -> dict[str, Any]:
        if response.values is None:
            return {"id": response.id, "status": response.status, "user_id": response.user_id}
        return original_map_response(response)

    OpenSearchEngine.update_record_response = update_record_response
    OpenSearchEngine.delete_record_response = delete_record_response
    OpenSearchEngine.delete_record_suggestion = delete_record_suggestion
    OpenSearchEngine._request_similarity_search = request_similarity_search
    commons.BaseElasticAndOpenSearchEngine._map_record_response_to_es = staticmethod(map_record_response_to_es)


def _get_path(source: dict, dotted: str) -> Any:
    value: Any = source
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=6900)
    worker = sub.add_parser("worker")
    worker.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args()
    _patch()
    if args.command == "server":
        import uvicorn
        from argilla_server import app

        uvicorn.run(app, host=args.host, port=args.port, access_log=False)
    else:
        # rq forks its workers from this process, so they inherit the patched engine.
        from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
        from rq.worker_pool import WorkerPool

        WorkerPool(connection=REDIS_CONNECTION, queues=[DEFAULT_QUEUE.name, HIGH_QUEUE.name],
                   num_workers=args.num_workers).start()


if __name__ == "__main__":
    main()
