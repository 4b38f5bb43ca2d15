"""Typed handles used wrongly: each marked line must be a mypy error."""

from __future__ import annotations

import handle_tools
import zbridge

bridge = zbridge.Bridge(tools=handle_tools)
predict = bridge.handle(handle_tools.predict)

predict("1.0, 2.0")  # E: wrong argument type
predict()  # E: missing argument
bridge.handle(handle_tools.predikt)  # E: misspelt tool
label: str = predict([1.0])  # E: the result is a dict, not a str
predict.with_options(timout=1.0)  # E: misspelt option
predict.submit([1.0], treshold=0.2)  # E: misspelt keyword argument
