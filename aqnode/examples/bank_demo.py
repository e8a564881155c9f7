"""A short workload against a running node that serves ``aqnode.examples.bank``.

    python -m aqnode.examples.bank_demo --address 127.0.0.1:50051 [--accounts N] [--deposits M]

Many concurrent deposits to a few accounts (pipelined on one stream), a withdrawal that
fails, a transfer, then every balance read back through the accounts' own workers. The
exit code is 1 if any balance differs from what the deposits add up to.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections import Counter
from typing import TypeVar

from aqnode import Command, Query
from aqnode.client import Client
from aqnode.errors import AqError, BackpressureError, HandlerError
from aqnode.examples.bank import Balance, Deposit, GetBalance, Transfer, Withdraw

R = TypeVar("R")
WAIT_S = 60.0  #: seconds to wait for a reply that sits behind a whole burst of deposits
RETRY_S = 0.05  #: seconds between tries while an account's queue is full


async def ask(bus: Client, msg: Command[R] | Query[R]) -> R:
    """``enqueue_and_wait``, trying again while the account's queue is full (backpressure)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            reply: R = await bus.enqueue_and_wait(msg, timeout=WAIT_S)
            return reply
        except BackpressureError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_S)


async def deposit_burst(
    bus: Client, accounts: list[str], per_account: int, expected: dict[str, int]
) -> None:
    """Send every deposit at once (one ordered stream), then read each balance back."""
    deposits = [
        Deposit(account_id=a, amount=1 + i % 10) for i in range(per_account) for a in accounts
    ]
    started = time.perf_counter()
    results = await asyncio.gather(*(bus.enqueue(d) for d in deposits), return_exceptions=True)
    durable = time.perf_counter() - started
    rejected: Counter[str] = Counter()
    for deposit, result in zip(deposits, results, strict=True):
        if isinstance(result, AqError):
            rejected[result.code] += 1  # e.g. QUEUE_DEPTH_EXCEEDED: nothing was written
        elif isinstance(result, BaseException):
            raise result
        else:
            expected[deposit.account_id] += deposit.amount
    await asyncio.gather(*(ask(bus, GetBalance(a)) for a in accounts))
    handled = time.perf_counter() - started
    accepted = len(deposits) - sum(rejected.values())
    noun = "account" if len(accounts) == 1 else "accounts"
    print(f"{accepted} deposits to {len(accounts)} {noun}:")
    print(f"  durable in the log  {durable:6.2f}s  {accepted / durable:9,.0f} msg/s")
    print(f"  all handled         {handled:6.2f}s  {accepted / handled:9,.0f} msg/s")
    for code, count in sorted(rejected.items()):
        print(f"  rejected            {count} x {code}")


async def failing_withdrawal(bus: Client, account: str, expected: dict[str, int]) -> None:
    amount = expected[account] + 1
    try:
        await ask(bus, Withdraw(account, amount))
    except HandlerError as exc:
        print(f"withdraw {amount} from {account}: {exc.code} {exc.remote_type}")
        print(f"  {exc.remote_message}  (the balance is untouched)")
    else:
        print(f"withdraw {amount} from {account}: succeeded, but it should not have")
        expected[account] -= amount


async def transfer(bus: Client, source: str, target: str, expected: dict[str, int]) -> None:
    amount = expected[source] // 2
    after = await ask(bus, Transfer(source, target, amount))
    expected[source] -= amount
    expected[target] += amount
    print(f"transfer {amount} from {source} to {target}: {source} now has {after.balance}")


async def check_balances(bus: Client, expected: dict[str, int]) -> bool:
    replies: list[Balance] = await asyncio.gather(*(ask(bus, GetBalance(a)) for a in expected))
    print(f"\n{'account':<22} {'expected':>9} {'actual':>9}")
    all_right = True
    for account, reply in zip(expected, replies, strict=True):
        right = reply.balance == expected[account]
        all_right &= right
        mark = "ok" if right else "WRONG"
        print(f"{account:<22} {expected[account]:>9} {reply.balance:>9}  {mark}")
    return all_right


async def run(address: str, accounts: int, per_account: int) -> int:
    run_id = secrets.token_hex(3)  # fresh accounts each run: a node keeps old balances
    expected = {f"demo-{run_id}-{i}": 0 for i in range(accounts)}
    names = list(expected)
    async with Client(address) as bus:
        await deposit_burst(bus, names, per_account, expected)
        await failing_withdrawal(bus, names[0], expected)
        if len(names) > 1:
            await transfer(bus, names[0], names[1], expected)
        right = await check_balances(bus, expected)
    print("\nevery balance is right" if right else "\nSOME BALANCES ARE WRONG")
    return 0 if right else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aqnode.examples.bank_demo",
        description="A short workload against a node serving aqnode.examples.bank.",
    )
    parser.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT of the node")
    parser.add_argument("--accounts", type=int, default=4, help="accounts to use (default 4)")
    parser.add_argument(
        "--deposits", type=int, default=500, help="deposits per account (default 500)"
    )
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.deposits < 1:
        parser.error("--accounts and --deposits must be at least 1")
    try:
        return asyncio.run(run(args.address, args.accounts, args.deposits))
    except AqError as exc:
        print(f"bank_demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
