"""A MIDI controller for the tests, in its own process: `python tests/midi_controller.py NAME`.

Opens the JACK MIDI output `NAME:out` (JACK-Client), prints "ready", then sends each line read from stdin (decimal
bytes separated by spaces) as one MIDI event in the next JACK cycle; exits, closing its client, at end of input.
"""
import collections
import sys

import jack


def main() -> int:
    queue: collections.deque = collections.deque()
    client = jack.Client(sys.argv[1], no_start_server=True)
    port = client.midi_outports.register("out")

    @client.set_process_callback
    def process(frames):
        port.clear_buffer()
        while queue:
            port.write_midi_event(0, queue.popleft())

    client.activate()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            queue.append(bytes(int(b) for b in line.split()))
    client.deactivate()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
