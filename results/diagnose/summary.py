"""The "Every model" table of README.md, from the rows of each run (fractal set against the CIFAR-10 set)."""

import glob

import pandas as pd

out, above = {}, {}
for f in sorted(glob.glob("results/diagnose/*/rows.jsonl")):
    df = pd.read_json(f, lines=True)
    last = df["index"].max()
    row = {"quantizers": df["index"].nunique(),
           "per-channel quantizers": int(df[df.source == "cifar10"].per_channel.sum())}
    for s in ("fractal", "cifar10"):
        p = df[df.source == s]
        inner = p[p.layer != "x"]
        top = inner.loc[inner.clipped_fraction.idxmax()]
        row[f"{s}: mean clipped %"] = round(100 * p.clipped_fraction.mean(), 3)
        row[f"{s}: most clipped (not input)"] = f"{top.layer} {100 * top.clipped_fraction:.2f} %"
        row[f"{s}: worst local SQNR dB"] = round(p.local_sqnr_db.min(), 1)
        row[f"{s}: SQNR at last quantizer dB"] = round(p[p["index"] == last].sqnr_db.iloc[0], 1)
        above[(f.split("/")[2], s)] = ", ".join(inner[inner.clipped_fraction > 0.003].layer) or "none"
    frac, real = df[df.source == "fractal"], df[df.source == "cifar10"]
    row["mean clipped, fractal / cifar10"] = round(frac.clipped_fraction.mean() / real.clipped_fraction.mean(), 2)
    row["worst local SQNR, cifar10 - fractal dB"] = round(real.local_sqnr_db.min() - frac.local_sqnr_db.min(), 1)
    last_sqnr = {s: p[p["index"] == last].sqnr_db.iloc[0] for s, p in (("fractal", frac), ("cifar10", real))}
    row["last SQNR, cifar10 - fractal dB"] = round(last_sqnr["cifar10"] - last_sqnr["fractal"], 1)
    out[f.split("/")[2]] = row
order = ["resnet20-official", "resnet32-official", "resnet44-official", "resnet56-official",
         "shufflenetv2_x0_5-official", "resnet20-here", "shufflenetv2_x2_0-here"]
table = pd.DataFrame(out)
print(table[[c for c in order if c in table] + [c for c in table if c not in order]].astype(str).to_markdown())
print("\nQuantizers (not the input) that clip more than 0.3 % of the real values:\n")
for (run, source), layers in above.items():
    print(f"- {run}, {source}: {layers}")
