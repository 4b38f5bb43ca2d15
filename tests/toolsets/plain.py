"""No decorators: every public function defined here becomes a tool."""


def double(x):
    return 2 * x


def _private():
    return "never exposed"
