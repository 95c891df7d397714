"""How scarce and how old are MFCPL's complete prototypes? Measured from the protocol itself, without training.

For each missing rate and seed of the UCI-HAR protocol (client-level missingness, the experiments' own data
preparation and the coordinator's own participant sampling), it replays the rounds and records, per class,
when a sampled client last held complete samples of it (the round the coordinator's complete prototype of that
class was refreshed). Printed per (q, seed), as a markdown table:

* trainable / complete clients, and the complete samples behind each class (min-max over the covered classes);
* classes with a complete prototype at all, and the share of (round, class) pairs that have one;
* the age of the prototypes the clients receive (rounds since the refresh): median, 90th percentile, max.

    python scripts/complete_prototype_age.py --data-dir ../shared/data [--rates 0.5,0.8,0.9] [--seeds 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from coordinator.rounds.sampling import round_seed, sample_participants
from mfcpl.experiments.config import ExperimentConfig
from mfcpl.experiments.runner import prepare_data


def replay(cfg: ExperimentConfig) -> dict[str, str]:
    federation, _, _ = prepare_data(cfg)
    names = [m.name for m in federation.modalities]
    num_classes = federation.num_classes
    trainable: list[str] = []
    complete_classes: dict[str, np.ndarray] = {}
    samples_per_class = np.zeros(num_classes, int)
    for shard in federation.clients:
        has = np.stack([shard.data.present[m] for m in names], axis=1)
        if has.any():
            trainable.append(shard.name)
        complete = has.all(axis=1)
        if complete.any():
            labels = shard.data.labels[complete]
            complete_classes[shard.name] = np.unique(labels)
            samples_per_class += np.bincount(labels, minlength=num_classes)
    per_round = min(cfg.clients_per_round, len(trainable))
    refreshed = np.full(num_classes, -1)
    ages: list[int] = []
    covered_pairs = 0
    for number in range(1, cfg.rounds + 1):
        # what this round's clients receive: the prototypes as the previous rounds left them
        have = refreshed >= 0
        covered_pairs += int(have.sum())
        ages += (number - 1 - refreshed[have]).tolist()
        for name in sample_participants(trainable, per_round, round_seed(cfg.seed, number)):
            refreshed[complete_classes.get(name, np.array([], int))] = number
    covered = samples_per_class > 0
    age = (f"{np.median(ages):.0f} / {np.percentile(ages, 90):.0f} / {max(ages)}" if ages else "no prototype")
    samples = (f"{samples_per_class[covered].min()}-{samples_per_class[covered].max()}" if covered.any() else "-")
    return {
        "q": f"{cfg.missing_rate:g}",
        "seed": str(cfg.seed),
        "trainable / complete clients": f"{len(trainable)} / {len(complete_classes)}",
        "classes with a complete prototype": f"{int(covered.sum())} of {num_classes}",
        "complete samples per covered class": samples,
        "(round, class) pairs with a prototype": f"{100 * covered_pairs / (cfg.rounds * num_classes):.0f}%",
        "age received, rounds: median / p90 / max": age,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rates", default="0.5,0.8,0.9")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    rows = []
    for q in (float(x) for x in args.rates.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            cfg = ExperimentConfig(algorithm="mfcpl", missing_rate=q, missing_mode="client", seed=seed,
                                   rounds=args.rounds, data_dir=args.data_dir)
            rows.append(replay(cfg))
            print(f"q={q:g} seed={seed} done", file=sys.stderr, flush=True)
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
