"""Exercise 11 (§3, decoding): the KV cache's growing buffers.

Sampling feeds one pattern step at a time, and each step's self-attention needs the keys and values of
all the steps before it. Recomputing them costs O(S) per step, O(S²) in all; a KV cache keeps them:

    K_{1..s} = [K_{1..s-1} ; k_s],      V_{1..s} = [V_{1..s-1} ; v_s]        (concatenated along the steps)

so each new step computes only its own k_s, v_s. The obvious torch.cat([past, new]) copies the whole past
at every step, so `LayerCache` keeps preallocated buffers (B, H, capacity, Dh) whose first `length`
steps are valid, writes new steps into them in place, and grows them (doubling) when they are full.
Write `LayerCache.append` in transformer.py: keys, values (B, H, S, Dh) of S new steps; it returns all
the keys and values held so far, 2 × (B, H, length, Dh), and `length` counts them.
"""
import torch

import transformer
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=11, title="The KV cache", section="§3",
    blanks=[("transformer.py", "LayerCache.append")],
    hints=["On the first call (key_buffer is None), or when length + S exceeds the capacity "
           "(key_buffer.shape[2]), allocate new buffers: keys.new_empty(B, H, capacity, Dh), capacity e.g. "
           "max(64, 2 * (length + S)), and copy the `length` valid steps of the old buffers into them.",
           "Then write the new steps in place: self.key_buffer[:, :, self.length:end] = keys (the same for the "
           "values), and advance self.length to end.",
           "Return views of the valid part only: self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]."],
)


def steps(generator, S, B=2, H=3, Dh=4):
    return torch.randn(B, H, S, Dh, generator=generator), torch.randn(B, H, S, Dh, generator=generator)


def compare(got, expected, what):
    keys, values = got
    if keys.shape != expected[0].shape or values.shape != expected[1].shape:
        raise Wrong(f"{what}: append returned keys {tuple(keys.shape)} and values {tuple(values.shape)}, expected "
                    f"{tuple(expected[0].shape)} each (B, H, length, Dh): only the `length` valid steps of the "
                    "buffers, not their whole capacity")
    if not torch.equal(keys, expected[0]):
        raise Wrong(f"{what}: the keys held differ from the concatenation of the appended keys along the steps "
                    "(dim 2); is each chunk written at steps length .. length + S, and is the past kept?")
    if not torch.equal(values, expected[1]):
        raise Wrong(f"{what}: the values held differ from the concatenation of the appended values (the keys "
                    "are right): are the values written into the value buffer?")


def check_chunks_concatenate():
    """Appending 3 steps then 2 returns their concatenation, 5 steps; length counts 3 then 5."""
    generator = torch.Generator().manual_seed(0)
    cache = transformer.LayerCache()
    first, second = steps(generator, 3), steps(generator, 2)
    got = cache.append(*first)
    compare(got, first, "after appending 3 steps")
    if cache.length != 3:
        raise Wrong(f"after appending 3 steps cache.length is {cache.length}, expected 3: advance length by S")
    got = cache.append(*second)
    compare(got, (torch.cat([first[0], second[0]], 2), torch.cat([first[1], second[1]], 2)), "after 3 + 2 steps")
    if cache.length != 5:
        raise Wrong(f"after appending 3 then 2 steps cache.length is {cache.length}, expected 5")


def check_one_step_at_a_time():
    """Ten appends of 1 step each (decoding): each returns every step so far, in order."""
    generator = torch.Generator().manual_seed(1)
    cache = transformer.LayerCache()
    all_keys, all_values = [], []
    for s in range(10):
        keys, values = steps(generator, 1)
        all_keys.append(keys)
        all_values.append(values)
        got = cache.append(keys, values)
        compare(got, (torch.cat(all_keys, 2), torch.cat(all_values, 2)), f"after {s + 1} one-step appends")
        if cache.length != s + 1:
            raise Wrong(f"after {s + 1} one-step appends cache.length is {cache.length}, expected {s + 1}")


def check_growing_keeps_the_past():
    """Growing past the buffers' capacity (40 steps, then 50, then 150 one by one) keeps every earlier step."""
    generator = torch.Generator().manual_seed(2)
    cache = transformer.LayerCache()
    chunks = [steps(generator, 40, B=1, H=2), steps(generator, 50, B=1, H=2)]
    chunks += [steps(generator, 1, B=1, H=2) for _ in range(150)]
    for chunk in chunks:
        got = cache.append(*chunk)
    expected = (torch.cat([c[0] for c in chunks], 2), torch.cat([c[1] for c in chunks], 2))
    compare(got, expected, "after 240 steps appended in 152 calls (the buffers had to grow)")
    if cache.length != 240:
        raise Wrong(f"after 240 steps cache.length is {cache.length}, expected 240")


def check_written_in_place():
    """The buffers hold the valid steps first, and 150 one-step appends reallocate them only a few times."""
    generator = torch.Generator().manual_seed(3)
    cache = transformer.LayerCache()
    held, buffers = [], set()
    for s in range(150):
        chunk = steps(generator, 1, B=1, H=2)
        held.append(chunk[0])
        cache.append(*chunk)
        if cache.key_buffer is None or cache.value_buffer is None:
            raise Wrong("after an append key_buffer / value_buffer are still None: the steps live in those "
                        "buffers, (B, H, capacity, Dh) with the first `length` steps valid")
        buffers.add(cache.key_buffer.data_ptr())
    if cache.key_buffer.shape[:2] != (1, 2) or cache.key_buffer.shape[2] < cache.length:
        raise Wrong(f"key_buffer has shape {tuple(cache.key_buffer.shape)} with length {cache.length}: it should be "
                    "(B, H, capacity, Dh) with capacity >= length")
    if not torch.equal(cache.key_buffer[:, :, :150], torch.cat(held, 2)):
        raise Wrong("the first `length` steps of key_buffer are not the keys appended so far, in order")
    if len(buffers) > 20:
        raise Wrong(f"150 one-step appends used {len(buffers)} different key buffers: each append copies the whole "
                    "past (torch.cat?). Write new steps into the existing buffer, self.key_buffer[:, :, length:end] "
                    "= keys, and grow it (doubling its capacity) only when it is full")
