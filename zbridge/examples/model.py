"""The web example's tools: a scikit-learn model trained once per daemon, and a no-op.

Importing this module is cheap (no scikit-learn, no numpy): the web app imports it only to
make typed handles (``client.handle(model.predict)``); the model is built in the daemons'
``@zbridge.startup`` hook. Needs scikit-learn in the daemons (``pip install
"zbridge[web-example]"``). ``ZBRIDGE_EXAMPLE_TREES`` (default 50) sets the forest's size.
"""

from __future__ import annotations

import os
from typing import Any

import zbridge

FEATURES = 20
MODEL: Any = None


@zbridge.startup
def load_model() -> None:
    """Train a RandomForest on a synthetic data set: seconds of start-up, paid once per daemon."""
    global MODEL
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    trees = int(os.environ.get("ZBRIDGE_EXAMPLE_TREES", "50"))
    x, y = make_classification(n_samples=4000, n_features=FEATURES, random_state=0)
    MODEL = RandomForestClassifier(n_estimators=trees, random_state=0).fit(x, y)


@zbridge.tool
def predict(features: list[float]) -> dict[str, Any]:
    """The class and its probability for one sample of ``FEATURES`` numbers."""
    if MODEL is None:
        raise RuntimeError("the model is loaded by load_model() (a start-up hook) first")
    if len(features) != FEATURES:
        raise ValueError(f"expected {FEATURES} features, got {len(features)}")
    probabilities = MODEL.predict_proba([features])[0]
    label = int(probabilities.argmax())
    return {"label": label, "probability": float(probabilities[label]), "daemon_pid": os.getpid()}


@zbridge.tool
def noop() -> None:
    """Nothing: the cost of a call itself."""
