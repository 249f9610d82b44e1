"""Collective bytes read from optimised HLO text: loop trip counts, async chains, groups."""

from rest_jax.loop import hlo_collectives

HLO = """
HloModule decode

%cond (p: (s32[], bf16[8,64])) -> pred[] {
  %p = (s32[], bf16[8,64]) parameter(0)
  %c = s32[] constant(32)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%piece.1 (a: bf16[1,64,128]) -> bf16[1,512,128] {
  %a = bf16[1,64,128]{2,1,0} parameter(0)
  ROOT %all-gather.1 = bf16[1,512,128]{2,1,0:T(8,128)} all-gather(%a), channel_id=7, replica_groups=[1,8]<=[8], dimensions={1}
}

%piece.2 (a: bf16[1,64,128]) -> bf16[1,512,128] {
  %a = bf16[1,64,128]{2,1,0} parameter(0)
  ROOT %all-gather.2 = bf16[1,512,128]{2,1,0:T(8,128)} all-gather(%a), channel_id=7, replica_groups=[1,8]<=[8], dimensions={1}
}

%body (p: (s32[], bf16[8,64])) -> (s32[], bf16[8,64]) {
  %p = (s32[], bf16[8,64]) parameter(0)
  %x = bf16[8,64]{1,0} get-tuple-element(%p), index=1
  %ar = bf16[8,64]{1,0} all-reduce(%x), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, to_apply=%add
  %w = bf16[1,64,128]{2,1,0} constant({...})
  %f1 = bf16[1,512,128]{2,1,0} fusion(%w), kind=kLoop, calls=%piece.1
  %f2 = bf16[1,512,128]{2,1,0} fusion(%w), kind=kLoop, calls=%piece.2
  ROOT %t = (s32[], bf16[8,64]) tuple(%p, %ar)
}

ENTRY %main (x: bf16[8,64]) -> bf16[8,64] {
  %x = bf16[8,64]{1,0} parameter(0)
  %cp = (f32[16,4]{1,0}, f32[16,4]{1,0}, u32[], u32[]) collective-permute-start(%x), channel_id=9, source_target_pairs={{0,1},{1,0}}
  %cpd = f32[16,4]{1,0} collective-permute-done(%cp)
  %w = (s32[], bf16[8,64]) while(%t0), condition=%cond, body=%body
  %w2 = (s32[], bf16[8,64]) while(%t0), condition=%cond2, body=%body2, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %r = bf16[8,64]{1,0} get-tuple-element(%w), index=1
}

%cond2 (p: (s32[], bf16[8,64])) -> pred[] {
  %p = (s32[], bf16[8,64]) parameter(0)
  ROOT %lt = pred[] compare(%p, %p), direction=LT
}

%body2 (p: (s32[], bf16[8,64])) -> (s32[], bf16[8,64]) {
  %p = (s32[], bf16[8,64]) parameter(0)
  %g = f32[4,256]{1,0} all-gather(%p), channel_id=11, replica_groups={{0,1},{2,3}}, dimensions={1}
  ROOT %t = (s32[], bf16[8,64]) tuple(%p, %p)
}
"""


def test_loop_bodies_count_as_often_as_they_run_and_a_chain_once():
  found, unknown = hlo_collectives.collectives(HLO, num_devices=8)
  assert not unknown
  by = {c.channel: c for c in found}
  assert sorted(by) == ["11", "3", "7", "9"]        # the two pieces of channel 7 are one
  assert (by["7"].times, by["7"].group, by["7"].shape) == (32, 8, (1, 512, 128))
  assert (by["3"].times, by["3"].group) == (32, 4)   # `i < 32`; mesh axes name the group
  assert (by["11"].times, by["11"].group) == (5, 2)  # known_trip_count; explicit groups
  assert (by["9"].times, by["9"].nbytes) == (1, 16 * 4 * 4)
  traffic = hlo_collectives.traffic_by_kind(HLO, num_devices=8)
  assert traffic["all-reduce"] == 32 * 2 * (8 * 64 * 2) * 3 / 4
  assert traffic["all-gather"] == 32 * (512 * 128 * 2) * 7 / 8 + 5 * (4 * 256 * 4) / 2
  assert traffic["collective-permute"] == 16 * 4 * 4


def test_a_loop_whose_bound_cannot_be_read_is_reported():
  text = HLO.replace('backend_config={"known_trip_count":{"n":"5"}}', "x=1")
  found, unknown = hlo_collectives.collectives(text, num_devices=8)
  assert unknown == ["body2"]
  assert next(c for c in found if c.channel == "11").times == 1
