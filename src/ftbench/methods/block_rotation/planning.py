"""What the memory planner and `mode=profile` ask of a block rotation (HiFT, BAdam, LISA): how many steps
show its states, how long a warm-up creates them, which units a short run has not visited, and a probe that
replays what a run's random order draws (plan/probe.py, plan/held_state.py). A mixin of `BlockRotation`
(method.py), whose schedule, units and configuration it reads; `probe_groups` rearranges the probe's schedule
and installs its first group through the rotation's own `_switch` and `_install`."""

from __future__ import annotations

import dataclasses

from ftbench.methods.block_rotation.config import BlockRotationConfig
from ftbench.methods.block_rotation.units import Draws, probe_units, replay_depth


class Planning:
    """The planner's hooks of `BlockRotation` (methods/base.py `Method` documents each hook's contract)."""

    def planned_steps(self) -> int:
        """A new group every step (HiFT) shows its states over a whole cycle; inside longer blocks (BAdam)
        one step holds what the block's steps hold, and sampled groups (LISA) are alike; a probe that
        replays a run's draws (`probe_groups`) traces them all."""
        if self.scripted is not None:
            return self.scripted[1]
        s = self.schedule
        return s.cycle_steps if s.steps_per_block == 1 and s.order != "sample" else 1

    def warmup_steps(self, requested: int, timed: int) -> int:
        """A unit's first visit creates its optimizer state, masters and (offload) host buffers: the
        warm-up grows until the `timed` steps after it visit no unit for the first time (HiFT, one
        unit per step: one cycle; BAdam's 50-step blocks: the requested warm-up usually suffices)."""
        firsts = self._first_visits()
        warmup = requested
        while True:
            inside = [step for step in firsts if warmup <= step < warmup + timed]
            if not inside:
                return warmup
            warmup = inside[-1] + 1

    def probe_warmup_steps(self, timed: int) -> int:
        """Under keep a unit's state stays on the device once visited, so a probe warms up until every unit
        has been visited: it then holds the state of all its layers, which grows linearly with depth
        (LISA's random draws leave a varying number of a shallow probe's layers unvisited otherwise); a probe
        that replays a run's draws after one pass over its units (`probe_groups`) warms up over that pass, and
        one of sampled groups under drop or offload until every unit has left once (`probe_groups`). Under drop
        and offload the device holds the active group's state only (the units a step shares with the step
        before it: `probe_groups`), and on the CPU offload's host buffers."""
        if self.scripted is not None:
            return self.scripted[0]
        firsts = self._first_visits() if self.cfg.state_policy == "keep" else []
        return self.warmup_steps(max(1, firsts[-1] + 1 if firsts else 1), timed)

    def unvisited_layers(self, steps: int | None) -> float:
        """Rotating units a run of `steps` steps has not yet visited at its last step, in layers' worth of
        parameters as the planner counts layers (the blocks of the stacks its probes cut, those as deep as the
        model's `num_hidden_layers`, over that depth: an encoder's and a decoder's block on T5, an encoder's on a
        BART whose decoder is deeper, which its probes keep whole: counted over every block, a 1 + 2-layer BART
        took off a third of its decoder block's state, +3.4 %): under keep their state, which a probe holds
        (`probe_warmup_steps`), does not exist yet (LISA's 20-step intervals in a short profile); 0
        under drop and offload (a probe holds the active group's state on the device, as the run does), and
        for a long run (`steps` None: every unit is visited)."""
        if steps is None or self.cfg.state_policy != "keep":
            return 0.0
        s = self.schedule
        visited = set(s.always).union(*(s.rotating(i) for i in range(s.interval(max(steps, 1) - 1) + 1)))
        blocks = [u.numel for u in self.units if len(u.place) == 3 and u.place[2] == self.depth]
        return sum(self.units[i].numel for i in s.queue if i not in visited) / (sum(blocks) / self.depth)

    def draws(self, start: int, steps: int, layers: int) -> Draws | None:
        """The groups a random order draws at the run's steps `start` .. `start + steps - 1` and the step before
        them, and the units that have left before that one (units.Draws), for the planner's probes to replay
        (`probe_groups`); None for the model's own orders, whose groups the probes take in the same order, and
        for LISA's sampled layers beside an always-active embedding under keep in a run deeper than its probes
        (every layer keeps what backward needs whichever are drawn; replayed in the probes' fewer layers, its
        draws planned BERT +4 %, against +2.6 % from the probes' own draws). Under drop and offload, and in a run
        probed at its own depth, they are replayed: which units a step draws, and how many it shares with the
        step before, move its peak. Replayed in a deeper run's probes (a random order's), the probes are as deep
        as puts each drawn block at its place (`units.replay_depth`: a middle block of a 6-layer run, 4 and 5
        layers), else at the schema's `planner_depths`."""
        shallow, deep = self.cfg.planner_depths(layers)
        own_depth = shallow == layers  # probed unit for unit (`probe_groups`)
        if self.cfg.order != "random" and not (self._staying_counts() or self.cfg.order == "sample" and own_depth):
            return None
        s, groups, first = self.schedule, [], max(start - 1, 0)
        for step in range(first, start + steps):
            group = tuple(self.units[i].place for i in sorted(s.rotating(s.interval(step))))
            if len(groups) < 2 or not groups[-1] == groups[-2] == group:
                groups.append(group)
        drawn = [set(s.rotating(i)) for i in range(s.interval(first) + 1)]
        left = set().union(*(a - b for a, b in zip(drawn, drawn[1:])))
        placed = replay_depth(tuple(groups), layers, shallow) if self.cfg.order == "random" else shallow
        return Draws(tuple(groups), layers, (placed, placed + deep - shallow),
                     None if left == set(s.queue) else tuple(self.units[i].place for i in sorted(left)))

    def probe_groups(self, planned: BlockRotationConfig, draws: Draws | None) -> None:
        """A probe (plan/probe.py) of a run whose order is random or sampled takes its groups bottom up
        (`probe_settings`). Given the run's `draws` (the planned steps': `draws`), it replays them: first what
        the run holds from before them (`_before_draws`), then the group of the step before the planned ones and
        each planned step's, in the probe's units as the run's (units.probe_units), so that its traced steps
        train what the run's do, in the same order (a group drawn twice in a row keeps its state through the
        second step's forward and backward under drop and offload; a unit of the run that stays stays in the
        probe, the others leave and arrive though they share probe units).

        Sampled groups (LISA) whose state leaves with them (drop, offload) are replayed so only in a run probed
        at its own depth (`planner_depths`: unit for unit; a 1 + 2-layer BART's own draw was another pair of
        blocks, -3.7 %). In a deeper run's, replayed in the probes' fewer layers, they plan high (a 6-layer BERT
        under drop +4 %): a step holds the state of the units the step before it trained too through its forward
        and backward, the others' from the optimizer step (drop) or their arrival (offload), so the probe traces
        its own draw after a group that shares with it as many units as the planned steps' draws share with the
        step before them at most (without draws, a long run's: all g, a group drawn again), after (offload)
        every unit has left once where a unit of the run leaves by the planned steps' last (the safe side), or
        none where none does (a profile of 20 steps per block never switches: no host buffer).

        Without draws, a random order of groups of g > 1 units can group any units, so the probe's queue is the
        lowest unit first and the others largest first (model order among equals): its first group trains the
        lowest unit beside the largest ones (T5: an encoder block beside a decoder block, which keeps more than
        the next encoder block)."""
        s = self.schedule
        shallow = draws.depths[0] if draws is not None else 0
        if draws is not None and (planned.order == "random" or shallow == draws.layers):
            run = [probe_units(group, self.units, draws.layers, shallow) for group in draws.groups]
            script = tuple(tuple(sorted(set(here.values()))) for here in run)
            before = self._before_draws(draws, shallow, script[0])
            self.scripted = (len(before) + 1, len(run) - 1)
            self.renewed = {len(before) + k: tuple(sorted({*s.always, *(here[p] for p, i in run[k - 1].items()
                                                                        if here.get(p) == i)}))
                            for k, here in enumerate(run) if k and draws.groups[k] != draws.groups[k - 1]}
            self.schedule = dataclasses.replace(s, steps_per_block=1, script=(*before, *script))
        elif self._staying_counts():
            g, queue = self.cfg.group_size, s.queue
            stays = g if draws is None else max((len(set(a) & set(b)) for a, b in
                                                  zip(draws.groups, draws.groups[1:])), default=0)
            cycle = [queue[k:k + g] for k in range(0, len(queue), g)]  # every unit visited
            leaves = draws is None or draws.left != () or any(set(a) - set(b) for a, b in zip(draws.groups,
                                                                                           draws.groups[1:]))
            traced = tuple(s.rotating(len(cycle) + 2))  # the probe's own draw
            before = tuple(sorted({*traced[:stays], *[i for i in queue if i not in traced][:g - stays]}))
            left = [*cycle, cycle[0]] if draws is None else self._before_draws(
                dataclasses.replace(draws, left=None if leaves else ()), shallow, before)
            self.scripted = (len(left) + 1, 1)
            self.schedule = dataclasses.replace(s, steps_per_block=1, script=(*left, before, traced))
        elif planned.order == "random" and self.cfg.group_size > 1:
            first, *rest = s.queue
            self.schedule = dataclasses.replace(s, queue=(first, *sorted(rest, key=lambda i: -self.units[i].numel)))
        else:
            return
        self._switch(self.schedule.active(0))
        self._install()

    def _before_draws(self, draws: Draws, shallow: int, first: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The probe's steps before the replayed draws, whose first group (in the probe's units) is `first`, which
        leave it holding what the run holds from the steps before them: under keep one pass over its units (every
        unit's state; the run's not yet visited are taken off: `unvisited_layers`); under offload the units that
        have left before them (`Draws.left`: every unit, or each in the probe's units as the run's), together, and
        each then leaves, so that its host buffers (on the CPU the run's own memory) exist: at `first`, or where
        `first` trains it, a step before, at a step of the others, to arrive again at `first` as the run's do (of
        none only where `first` trains them all: the always-active units train then; HiFT has none, and a step of
        none, always taken before, failed its backward: "element 0 of tensors does not require grad"); under drop
        none (a unit that has left holds nothing). A profile that never switches holds no host buffer (a 1 + 2-layer
        BART: the probes' pass over every unit planned +18 %)."""
        queue, g = self.schedule.queue, self.schedule.group_size
        if self.cfg.state_policy == "keep":
            return [queue[k:k + g] for k in range(0, len(queue), g)]
        if self.cfg.state_policy == "drop":
            return []
        left = set(queue) if draws.left is None else {
            i for place in draws.left for i in probe_units((place,), self.units, draws.layers, shallow).values()}
        if not left:
            return []
        return [tuple(sorted(left)), tuple(sorted(left - set(first)))] if left & set(first) else [tuple(sorted(left))]

    def _staying_counts(self) -> bool:
        """Whether what a step holds depends on how many of its units the step before it trained: sampled groups
        (LISA) whose state leaves with them (drop, offload) hold the state of those that stay through the step's
        forward and backward, and the others' only from the optimizer step on (drop: new) or from their arrival."""
        return self.cfg.order == "sample" and self.cfg.state_policy != "keep"

    def _first_visits(self) -> list[int]:
        """The steps at which some unit is active for the first time (order=sample: within 1000 cycles)."""
        firsts, seen, interval = [], set(), 0
        every = set(self.schedule.queue) | set(self.schedule.always)
        while seen != every and interval < 1000 * self.schedule.groups_per_cycle:  # (order=sample draws at random)
            new = set(self.schedule.active(interval)) - seen
            if new:
                firsts.append(interval * self.cfg.steps_per_block)
                seen |= new
            interval += 1
        return firsts
