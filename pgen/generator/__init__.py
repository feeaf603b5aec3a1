"""The machine learning of pgen: return-conditioned VAEs over policy parameters.

- `kinds`: the registry of generator kinds, chosen by `generator=<kind>` (`kind`: what a kind offers);
  `single/` (one architecture) and `family/` (every architecture of a family) are its entries;
- `vae`: the parts every kind's model shares; `condition`: the return condition and its calibration
  curve; `augment`: training augmentation;
- `fit`: the one fit loop; `sample`: `Generator`, what a trained generator offers (generation);
- `versions`: register, promote, list and load versions in the store.

It plays no policy: calibration by play and the choice among candidates are `pgen.evaluation`'s.
"""
