"""``ir-guidance``: the project's command line (run a node, run a benchmark).

On a full ROS 2 install ``ros2 run ir_guidance <node>`` works too; this CLI is the way
to start the same nodes where the ``ros2`` tool is absent (a pip-only environment).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCHES = ('kinematics', 'sim', 'perception')


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ir-guidance`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == 'node':
        from ir_guidance import nodes

        return nodes.run(args.name, args.node_args)
    if args.command == 'bench':
        return _bench(args)
    if args.command == 'train':
        from ir_guidance.perception import train_us

        return train_us.main(args.train_args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='ir-guidance', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command')

    node = sub.add_parser('node', help='run one ROS 2 node (ROS arguments pass through)')
    node.add_argument('name', help='node executable, e.g. arm_interface')
    node.add_argument('node_args', nargs=argparse.REMAINDER,
                      help='arguments for the node, e.g. --ros-args -p key:=value')

    train = sub.add_parser('train', help='train a perception model (see its --help)')
    train.add_argument('model', choices=('us',), help='us: the ultrasound vessel U-Net')
    train.add_argument('train_args', nargs=argparse.REMAINDER,
                       help='arguments for the training script, e.g. --out DIR --epochs N')

    bench = sub.add_parser('bench', help='run a benchmark and report JSON')
    bench.add_argument('name', choices=BENCHES)
    bench.add_argument('--json', type=Path, help='also write the results to this file')
    bench.add_argument('--seed', type=int, default=0)
    bench.add_argument('--targets', type=int, default=1000, help='IK targets (kinematics)')
    bench.add_argument('--seconds', type=float, default=2.0,
                       help='simulated seconds for the real-time factor (sim)')
    bench.add_argument('--phantom', type=Path,
                       help='phantom YAML (sim; default: the one named in config/)')
    bench.add_argument('--urdf', type=Path,
                       help='another arm: URDF or xacro file (default: the rig)')
    bench.add_argument('--base-link', help='chain base frame (with --urdf)')
    bench.add_argument('--tip-link', help='chain tip frame (with --urdf)')
    bench.add_argument('--home', type=float, nargs='+',
                       help='start configuration (default: config home for the rig, '
                            'mid-range of the limits for another arm)')
    bench.add_argument('--axis', type=float, nargs=3, default=(0.0, 0.0, 1.0),
                       help='needle axis in the tip frame (default: +z)')
    return parser


def _bench(args: argparse.Namespace) -> int:
    run = {'sim': _bench_sim, 'kinematics': _bench_kinematics,
           'perception': _bench_perception}[args.name]
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + '\n', encoding='utf-8')
    return 0


def _bench_kinematics(args: argparse.Namespace) -> dict:
    from ir_guidance import config
    from ir_guidance.bench import kinematics

    chain, home = _chain_and_home(args)
    ik_kwargs = {**config.load()['kinematics'], 'axis_local': tuple(args.axis)}
    result = kinematics.run(chain, home, count=args.targets, seed=args.seed,
                            ik_kwargs=ik_kwargs)
    result['meets_bar'] = bool(
        result['ik_success_rate'] >= 0.99 and result['ik_pos_err_mm_max'] <= 0.01
        and result['ik_axis_err_deg_max'] <= 0.01 and result['ik_over_pink_p50'] <= 0.5)
    return result


def _bench_sim(args: argparse.Namespace) -> dict:
    from ir_guidance.bench import sim
    from ir_guidance.sim.phantom import Phantom

    phantom = Phantom.from_yaml(args.phantom) if args.phantom else None
    result = sim.run(seed=args.seed, seconds=args.seconds, phantom=phantom)
    result['meets_bar'] = bool(result['realtime_factor'] >= 5.0
                               and result['stream_hash_repeatable'])
    return result


def _bench_perception(args: argparse.Namespace) -> dict:
    from ir_guidance.bench import perception

    result = perception.run()
    result['meets_bar'] = bool(
        result['us_dice'] >= 0.90 and result['us_dice'] > result['us_dice_classical']
        and result['us_center_err_mm_p50'] <= 0.3 and result['us_fps'] >= 100
        and result['nir_fps'] >= 30 and result['nir_recall'] >= 0.9)
    return result


def _chain_and_home(args: argparse.Namespace):
    import numpy as np

    from ir_guidance import config, rig_description
    from ir_guidance.bench.kinematics import default_home
    from ir_guidance.kinematics import SerialChain

    if args.urdf is None:
        if args.base_link or args.tip_link:
            sys.exit('--base-link/--tip-link need --urdf')
        chain = rig_description.rig_chain()
        home = np.array(config.load()['robot']['home'], dtype=float)
    else:
        if not (args.base_link and args.tip_link):
            sys.exit('--urdf needs --base-link and --tip-link')
        xml = rig_description.expand(str(args.urdf))
        chain = SerialChain.from_urdf(xml, args.base_link, args.tip_link)
        home = default_home(chain)
    if args.home is not None:
        home = np.array(args.home, dtype=float)
    return chain, chain.check_positions(home)


if __name__ == '__main__':
    sys.exit(main())
