"""Defaults shared by every config: see rnn_jax/config.py for each field and its meaning.

Task configs start from `get_config()` here and change only what differs.
"""

from rnn_jax import config as config_lib


def get_config():
  return config_lib.defaults()
