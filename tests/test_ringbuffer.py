"""The SPSC ring: order, wrap-around, back-pressure, and a real two-thread stress run (no frame lost or doubled)."""
import threading
import time

import numpy as np

from instrument.ringbuffer import RingBuffer


def test_wraps_around_in_order_and_reports_fill():
    r = RingBuffer(8, 2)
    ramp = np.arange(40, dtype=np.float32).reshape(20, 2)
    assert r.write(ramp[:6]) == 6 and r.available() == 6 and r.free() == 2
    out = np.zeros((4, 2), np.float32)
    assert r.read_into(out) == 4
    np.testing.assert_array_equal(out, ramp[:4])
    assert r.write(ramp[6:12]) == 6  # wraps past the end of the storage
    assert r.free() == 0 and r.write(ramp[12:13]) == 0  # full: the producer is refused, nothing overwritten
    got = np.zeros((8, 2), np.float32)
    assert r.read_into(got) == 8
    np.testing.assert_array_equal(got, ramp[4:12])
    assert r.read_into(got) == 0 and r.available() == 0
    assert r.frames_written == 12 and r.frames_read == 12


def test_partial_read_leaves_rest_untouched_and_partial_write_when_nearly_full():
    r = RingBuffer(5, 1)
    assert r.write(np.ones((3, 1), np.float32)) == 3
    out = np.full((6, 1), -7.0, np.float32)
    assert r.read_into(out) == 3
    assert (out[:3] == 1).all() and (out[3:] == -7).all()
    assert r.write(np.ones((9, 1), np.float32)) == 5


def test_two_threads_stream_every_frame_exactly_once():
    r = RingBuffer(257, 1)  # a prime capacity, so chunk edges land everywhere
    total = 60_000
    rng = np.random.default_rng(0)
    sizes_w = rng.integers(1, 300, 5000)
    sizes_r = rng.integers(1, 300, 5000)
    received = []

    def produce():
        sent, i = 0, 0
        while sent < total:
            n = int(min(sizes_w[i % len(sizes_w)], total - sent))
            i += 1
            chunk = np.arange(sent, sent + n, dtype=np.float32)[:, None]
            done = 0
            while done < n:
                w = r.write(chunk[done:])
                done += w
                if not w:
                    time.sleep(0)  # full: let the consumer run
            sent += n

    t = threading.Thread(target=produce)
    t.start()
    got, i = 0, 0
    buf = np.zeros((300, 1), np.float32)
    while got < total:
        n = r.read_into(buf[: sizes_r[i % len(sizes_r)]])
        i += 1
        if n:
            received.append(buf[:n, 0].copy())
            got += n
        else:
            time.sleep(0)
    t.join()
    stream = np.concatenate(received)
    np.testing.assert_array_equal(stream, np.arange(total, dtype=np.float32))
