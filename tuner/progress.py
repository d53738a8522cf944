import sys

from tqdm import tqdm


def epoch_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=True)
