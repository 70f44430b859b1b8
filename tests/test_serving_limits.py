"""The embedded server's limits, each against its own mechanism without a model: gRPC tensors
checked from their headers, the body reader's places and rate, the admission's state and the
cancellation of a request."""

import asyncio
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from aiohttp import web
from attacks import sparse_tensor, trickle

from tfmeta_serving import tensor_protos
from tfmeta_serving.admission import Admission, Cancellation, Limits, limits_of
from tfmeta_serving.bodies import Bodies
from tfmeta_serving.errors import ServingError
from tfmeta.errors import ConfigError

IMAGES = tf.TensorSpec([None, 28, 28, 1], tf.float32)


# --- gRPC tensors ---------------------------------------------------------------------------------

def test_a_tensor_that_stores_every_value_passes_with_its_shape_and_size():
    proto = tf.make_tensor_proto(np.zeros((3, 28, 28, 1), np.float32))
    assert tensor_protos.check("query_x", proto, IMAGES, "s", 1 << 20) == ([3, 28, 28, 1], 9408)
    labels = sparse_tensor([5], tf.int32, stored=5)   # as int_val, not tensor_content
    assert tensor_protos.check("y", labels, tf.TensorSpec([None], tf.int32), "s", 100) == ([5], 20)
    files = tf.make_tensor_proto(np.array([b"ab", b"cde"], object))
    assert tensor_protos.check("f", files, tf.TensorSpec([None], tf.string), "s", 100) == ([2], 5)


@pytest.mark.parametrize("make, spec, message", [
    (lambda: sparse_tensor([1 << 28, 28, 28, 1]), IMAGES,
     r"declares shape \[268435456, 28, 28, 1\] \(210453397504 values\) but stores 1 values"),
    (lambda: sparse_tensor([1 << 30]), tf.TensorSpec([None], tf.float32),
     r"declares shape \[1073741824\] \(1073741824 values\) but stores 1 values"),
    (lambda: _cut(tf.make_tensor_proto(np.zeros((4, 28, 28, 1), np.float32))), IMAGES,
     r"stores 12540 bytes of tensor_content \(12544 needed\)"),
    (lambda: _declare(tf.make_tensor_proto(np.array([b"x"], object)), [4000]),
     tf.TensorSpec([None], tf.string), r"declares shape \[4000\] \(4000 values\) but stores 1"),
    (lambda: tf.make_tensor_proto(np.zeros((2, 28, 28, 1), np.float64)), IMAGES,
     "input 'x' is float64; signature 's' takes float32"),
    (lambda: tf.make_tensor_proto(np.zeros((2, 28, 28), np.float32)), IMAGES,
     r"has shape \[2, 28, 28\]; expected \[\?, 28, 28, 1\]"),
    (lambda: _declare(tf.make_tensor_proto(np.zeros(1, np.float32)), [-1]),
     tf.TensorSpec([None], tf.float32), "negative dimension"),
    (lambda: tf.make_tensor_proto(np.zeros((300, 28, 28, 1), np.float32)), IMAGES,
     r"940800 bytes decoded, over the limit of 500000 bytes"),
])
def test_a_tensor_whose_values_do_not_cover_its_shape_is_refused_unread(make, spec, message):
    with pytest.raises(ServingError, match=message) as error:
        tensor_protos.check("x", make(), spec, "s", 500_000)
    assert error.value.status == 400


def test_the_request_in_all_is_bounded_too():
    half = tf.make_tensor_proto(np.zeros((100, 28, 28, 1), np.float32))   # 313,600 bytes each
    specs = {"a": IMAGES, "b": IMAGES}
    assert tensor_protos.check_all({"a": half}, specs, "s", 500_000) == {"a": [100, 28, 28, 1]}
    with pytest.raises(ServingError, match="the request's tensors decode to 627200 bytes"):
        tensor_protos.check_all({"a": half, "b": half}, specs, "s", 500_000)


def _cut(proto):
    proto.tensor_content = proto.tensor_content[:-4]
    return proto


def _declare(proto, shape):
    del proto.tensor_shape.dim[:]
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


# --- admission and cancellation -------------------------------------------------------------------

def test_a_full_server_says_how_many_run_and_wait():
    admission = Admission(concurrent=2, queued=1)
    for _ in range(3):
        admission.admit()
    with admission.slot(None):
        with pytest.raises(ServingError) as error:
            admission.admit()
    assert error.value.status == 503 and error.value.message.startswith(
        "the server is busy: 1 predictions are running and 2 waiting, its limits are 2 and 1")


def test_a_cancelled_wait_for_a_slot_ends_at_once():
    admission = Admission(concurrent=1, queued=1)
    cancellation = Cancellation()
    with admission.slot(None):
        threading.Timer(0.2, cancellation.cancel).start()
        start = time.perf_counter()
        with pytest.raises(ServingError) as error:
            with admission.slot(None, cancellation):
                pass
        assert error.value.status == 499 and time.perf_counter() - start < 1
    with admission.slot(time.monotonic() + 1):  # the slot it never took is free
        pass


def test_a_cancellation_calls_back_once_registered_or_at_once():
    calls = []
    cancellation = Cancellation()
    cancellation.on_cancel(lambda: calls.append("first"))
    cancellation.on_cancel(None)
    cancellation.cancel()
    assert calls == [] and cancellation.cancelled
    cancellation.on_cancel(lambda: calls.append("late"))
    assert calls == ["late"]


def test_a_call_ended_by_its_own_deadline_keeps_its_session():
    """A client's deadline ends its call before the server's copy of it, by the time its headers
    took to arrive; that end is left to TensorFlow's timeout (the session stays warm), and only
    an earlier end, a client that gives up, closes the session to stop the work."""
    from tfmeta_serving.grpc_service import DEADLINE_SLACK_SECONDS, stops_by_closing
    assert DEADLINE_SLACK_SECONDS >= 0.5
    deadline = 100.0
    assert not stops_by_closing(deadline, deadline - 0.3)   # a loaded machine's header delay
    assert not stops_by_closing(deadline, deadline + 0.1)
    assert stops_by_closing(deadline, deadline - 5.0)
    assert stops_by_closing(None, 1e9)   # no deadline: only a cancellation ends it early


def test_limits_name_the_flag_of_a_value_below_its_lowest():
    assert limits_of({"receiving": 3, "queued": None}) == Limits(receiving=3)
    with pytest.raises(ConfigError, match="--max-receiving-bodies must be at least 1, got 0"):
        limits_of({"receiving": 0})
    # A flag in MB or kB is named in its own units, not in the bytes it becomes.
    with pytest.raises(ConfigError, match="--task-cache-mb must be at least 0, got -1$"):
        limits_of({"task_cache_bytes": -(1 << 20)})
    with pytest.raises(ConfigError, match="--max-body-mb must be above 0, got 0$"):
        limits_of({"max_body_bytes": 0})
    with pytest.raises(ConfigError, match="--min-body-rate-kb must be above 0, got -0.5$"):
        limits_of({"min_body_rate": -512})


# --- reading bodies -------------------------------------------------------------------------------

class BodyServer:
    """An aiohttp app on a free port whose one route reads its body with `Bodies` and answers its
    length, in a thread of its own."""

    def __init__(self, bodies: Bodies, deadline_seconds=None):
        self.bodies, self.port = bodies, None
        started = threading.Event()

        async def handle(request):
            deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
            try:
                body = await bodies.read(request, deadline, 1000)
            except ServingError as error:
                response = web.json_response({"error": error.message}, status=error.status)
                if error.status == 408:
                    response.force_close()
                return response
            return web.json_response({"length": len(body)})

        async def main():
            app = web.Application()
            app.router.add_post("/", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self.stop = asyncio.Event()
            started.set()
            await self.stop.wait()
            await runner.cleanup()

        def run():
            loop = self.loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(main())
            pending = asyncio.all_tasks(loop)   # keep-alive connections' handlers
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=run)
        self.thread.start()
        started.wait(10)

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def post(port: int, body: bytes) -> int:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/", data=body, method="POST"), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_slow_body_gets_408_after_its_grace_and_a_fast_one_is_read():
    server = BodyServer(Bodies(1 << 20, limit=4, grace=0.5, rate=1000))
    try:
        assert post(server.port, b"x" * 100_000) == 200
        status, took, sent = trickle("127.0.0.1", server.port, "/", b"x" * 100, every=0.2,
                                     seconds=5)
        # A byte every 0.2 s is 5 bytes/s: cut off at the grace of 0.5 s plus 1 s per 1000 bytes
        # received, well before the 20 s the body would take (3 s: room for a loaded machine).
        assert status == 408 and 0.5 <= took < 3, (status, took, sent)
        assert server.bodies.reading == 0
    finally:
        server.close()


def test_a_steady_slow_body_within_the_rate_is_read():
    server = BodyServer(Bodies(1 << 20, limit=4, grace=0.5, rate=10))
    try:
        # 10 bytes at once, then a byte every 0.1 s against a rate of 10 bytes/s: each byte buys
        # 0.1 s, so the allowance stays about 1.5 s ahead of the clock for the 2 s it takes.
        status, took, _ = trickle("127.0.0.1", server.port, "/", b"x" * 30, first=10,
                                  every=0.1, seconds=10)
        assert status == 200 and took > 1.5, (status, took)
    finally:
        server.close()


def test_bodies_beyond_the_places_get_503_and_the_places_come_back():
    server = BodyServer(Bodies(1 << 20, limit=2, grace=1.0, rate=1000))
    try:
        results = []
        senders = [threading.Thread(target=lambda: results.append(trickle(
            "127.0.0.1", server.port, "/", b"x" * 50, seconds=5))) for _ in range(2)]
        for sender in senders:
            sender.start()
        time.sleep(0.3)
        assert post(server.port, b"{}") == 503
        for sender in senders:
            sender.join()
        assert [r[0] for r in results] == [408, 408]
        assert post(server.port, b"{}") == 200
    finally:
        server.close()


def test_the_request_deadline_covers_reading_with_a_504():
    server = BodyServer(Bodies(1 << 20, limit=2, grace=5.0, rate=1000), deadline_seconds=0.5)
    try:
        status, took, _ = trickle("127.0.0.1", server.port, "/", b"x" * 50, every=0.1, seconds=5)
        assert status == 504 and 0.5 <= took < 3
    finally:
        server.close()


def test_a_body_over_the_limit_is_refused_from_its_length_or_as_it_arrives():
    server = BodyServer(Bodies(1000, limit=2))
    try:
        assert post(server.port, b"x" * 1001) == 400
    finally:
        server.close()


# --- out of memory --------------------------------------------------------------------------------

def test_running_out_of_memory_is_resource_exhausted_and_the_service_lives_on(monkeypatch):
    """A MemoryError while a request's tensors are made is that request's RESOURCE_EXHAUSTED."""
    import grpc
    from tensorflow_serving.apis import predict_pb2

    from tfmeta_serving import grpc_service

    class Served:
        number = 1

        def check_examples(self, signature, shapes):
            pass

    class Repository:
        def signature(self, name, version, signature):
            return Served(), "serving_default", {"x": IMAGES}

    class Aborted(Exception):
        pass

    class Context:
        def time_remaining(self):
            return None

        def add_callback(self, callback):
            pass

        def abort(self, code, details):
            self.code, self.details = code, details
            raise Aborted

    def exhausted(proto):
        raise MemoryError

    service = grpc_service.PredictionService(Repository(), Admission(), 1 << 20)
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 28, 28, 1), np.float32)))
    monkeypatch.setattr(grpc_service.tf, "make_ndarray", exhausted)
    context = Context()
    with pytest.raises(Aborted):
        service.Predict(request, context)
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert context.details == "the server ran out of memory for this request"
    assert service.admission.admitted == 0   # its ticket and slot were given back


# --- sessions -------------------------------------------------------------------------------------

def test_a_lease_never_waits_for_the_background_preparation(tmp_path, monkeypatch):
    """The spare is prepared by a thread at the lowest priority, which a busy machine may starve:
    a request that finds no idle session prepares its own rather than wait for that thread; the
    pool then keeps its size."""
    from tfmeta_serving import sessions

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": 2 * x}
    module = Double()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"double": module.double})

    def starved(pool):   # a preparation that is under way and never finishes
        pool._preparing = pool._size - len(pool._idle) - pool._leased
    monkeypatch.setattr(sessions.SessionPool, "_replenish", starved)
    pool = sessions.SessionPool(tmp_path / "1", tf.Graph(), size=2)
    assert pool._preparing == 1
    signature = pool.meta_graph.signature_def["double"]
    feed, fetch = signature.inputs["x"].name, signature.outputs["y"].name
    with pool.lease() as session:
        session.close()   # as a cancelled request closes its own
    answers = []
    leasing = threading.Thread(target=lambda: answers.append(_leased_run(pool, fetch, feed)))
    leasing.start()
    leasing.join(timeout=30)
    assert answers and list(answers[0]) == [2.0, 4.0]
    with pool.lease() as first, pool.lease() as second, pool.lease() as third:
        assert len({id(first), id(second), id(third)}) == 3
    assert len(pool._idle) == 2   # the third went: the pool keeps its size
    pool.close()


def _leased_run(pool, fetch, feed):
    with pool.lease() as session:
        return session.run(fetch, {feed: [1.0, 2.0]})
