"""Atari game names: the 26 Atari100k games, and the one resolver of every spelling of a game
that rlts accepts (`make_env`, `rlts atari100k run --games`, the Atari100k report); and the two
fixed settings of rlts's Atari envs that the report lists beside the published agents' protocols
(`ATARI_STICKY_ACTIONS`, `ATARI_ACTION_SET`).

    find_game("ms_pacman", ATARI100K_GAMES)             # 'MsPacman'
    find_game("ALE/Pong-v5", ATARI100K_GAMES)           # 'Pong'
    find_game("PongNoFrameskip-v4", ATARI100K_GAMES)    # 'Pong'
    find_game("Pongg", ATARI100K_GAMES)                 # None
    close_games("Pongg", ATARI100K_GAMES)               # ['Pong']: for "did you mean" hints

Names are compared by their key (`game_key`): without an `ALE/` prefix, a `-v<k>` version suffix
or the `NoFrameskip` / `Deterministic` suffix of the legacy Gym ids, in lower case, letters and
digits only. Needs neither Gymnasium nor the emulator; `make_env` asks Gymnasium first, so that a
registered id of another env that spells a game ("Blackjack-v1", the toy-text game) stays that env.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable, List, Optional

ATARI100K_GAMES = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)
"""The 26 games of the Atari100k benchmark, as ALE names them (ALE/<Game>-v5)."""

ATARI_STICKY_ACTIONS = 0.0
"""Probability that the emulator repeats the previous action instead of the new one (sticky
actions) in every Atari env of rlts (`rlts.tasks.rl.envs`): 0, off."""

ATARI_ACTION_SET = "minimal"
"""The action set of every Atari env of rlts: the game's minimal set ("full" would be all 18)."""


def game_key(name: str) -> str:
    """The key a game name is compared by: "MsPacman", "ms_pacman", "ALE/MsPacman-v5" and
    "MsPacmanNoFrameskip-v4" all give "mspacman"."""
    name = str(name).strip()
    if name.startswith("ALE/"):
        name = name[4:]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_game(name: str, games: Iterable[str]) -> Optional[str]:
    """The entry of `games` that `name` spells (see `game_key`), or None."""
    key = game_key(name)
    return next((g for g in games if game_key(g) == key), None) if key else None


def close_games(name: str, games: Iterable[str], n: int = 3) -> List[str]:
    """Up to `n` entries of `games` whose keys are close to `name`'s, closest first."""
    by_key = {game_key(g): g for g in games}
    return [by_key[k] for k in difflib.get_close_matches(game_key(name), list(by_key), n=n)]
