"""``ir-guidance``: the project's command line (a simulated insertion, a node, a benchmark).

On a full ROS 2 install ``ros2 run ir_guidance <node>`` works too; this CLI is the way
to start the same nodes where the ``ros2`` tool is absent (a pip-only environment).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCHES = ('kinematics', 'sim', 'perception', 'mapping', 'planning', 'control',
           'calibration')


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ir-guidance`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == 'node':
        from ir_guidance import nodes

        return nodes.run(args.name, args.node_args)
    if args.command == 'bench':
        return _bench(args)
    if args.command == 'sim':
        return _sim(args)
    if args.command == 'campaign':
        return _campaign(args)
    if args.command == 'replay':
        from ir_guidance.recording.replay import exit_code, replay

        try:
            result = replay(args.bag, args.node, compare=args.compare, rate=args.rate)
        except ValueError as error:
            print(f'replay: {error}', file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2, default=str))
        return exit_code(result)
    if args.command == 'calibrate':
        from ir_guidance import calibration

        return calibration.main(args.calibrate_args)
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

    sim = sub.add_parser('sim', help='one complete simulated insertion, scored')
    source = sim.add_mutually_exclusive_group()
    source.add_argument('--seed', type=int, default=None,
                        help='random phantom and simulator seed (default 1)')
    source.add_argument('--phantom', type=Path, help='phantom YAML (docs/phantom.md)')
    sim.add_argument('--json', type=Path, help='write the result here')
    sim.add_argument('--report', type=Path, help='write the report PNGs to this folder')
    sim.add_argument('--record', type=Path,
                     help='record every topic to OUT.mcap (rosbag2 layout: OUT/OUT_0.mcap)')
    sim.add_argument('--live', action='store_true',
                     help='serve a live Foxglove view on ws://127.0.0.1:8765 (config live_view)')
    sim.add_argument('--fault', default='',
                     help='inject a fault: us_dropout, nir_dropout, ft_stale, ft_spike, '
                          'joint_nan, target_jump, estop_at:<s>, kill:<node>')
    sim.add_argument('--single-process', action='store_true',
                     help='every node in this process (default: one process each)')
    sim.add_argument('--workdir', type=Path, help='keep logs here (default: a temp dir)')
    sim.add_argument('--timeout', type=float, default=300.0, help='wall seconds')

    campaign = sub.add_parser('campaign', help='many simulated insertions, summarised')
    which = campaign.add_mutually_exclusive_group(required=True)
    which.add_argument('--seeds', help='A-B: random phantoms A..B inclusive')
    which.add_argument('--phantoms', type=Path, help='a folder of phantom YAML files')
    campaign.add_argument('--workers', type=int, default=2)
    campaign.add_argument('--json', type=Path, help='write the summary and every run here')
    campaign.add_argument('--fault', default='', help='the same fault in every run')
    campaign.add_argument('--workdir', type=Path, help='keep each run\'s logs under here')
    campaign.add_argument('--processes', action='store_true',
                          help='one process per node in each run (default: one per run)')

    replay = sub.add_parser('replay', help='feed one node its recorded inputs, compare outputs')
    replay.add_argument('bag', type=Path, help='a recording (OUT.mcap, its folder or file)')
    replay.add_argument('--node', required=True, help='node to bench, e.g. ultrasound')
    replay.add_argument('--compare', action='store_true',
                        help='compare with the recorded outputs; exit 1 on a regression')
    replay.add_argument('--rate', type=float, default=None,
                        help='1.0 = recorded timing (default: as fast as the node answers)')

    calibrate = sub.add_parser('calibrate', help='hand-eye (camera) or US probe calibration '
                                                 '(see docs/calibration.md and its --help)')
    calibrate.add_argument('calibrate_args', nargs=argparse.REMAINDER,
                           help='hand-eye DATA.yaml | probe DATA.yaml | simulate KIND OUT.yaml')

    train = sub.add_parser('train', help='train a perception model (see its --help)')
    train.add_argument('model', choices=('us',), help='us: the ultrasound vessel U-Net')
    train.add_argument('train_args', nargs=argparse.REMAINDER,
                       help='arguments for the training script, e.g. --out DIR --epochs N')

    bench = sub.add_parser('bench', help='run a benchmark and report JSON')
    bench.add_argument('name', choices=BENCHES)
    bench.add_argument('--json', type=Path, help='also write the results to this file')
    bench.add_argument('--seed', type=int, default=0)
    bench.add_argument('--targets', type=int, default=1000, help='IK targets (kinematics)')
    bench.add_argument('--seconds', type=float,
                       help='sim: simulated seconds for the real-time factor (default 2); '
                            'control: wall seconds at 1 kHz (default 30)')
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


def _sim(args: argparse.Namespace) -> int:
    from ir_guidance.runs import insertion

    seed = 1 if args.seed is None else args.seed
    options = insertion.RunOptions(
        seed=seed, phantom=str(args.phantom.resolve()) if args.phantom else None,
        fault=args.fault, single_process=args.single_process, timeout_s=args.timeout,
        workdir=args.workdir, record=args.record.resolve() if args.record else None,
        live=args.live)
    result = insertion.run(options)
    if args.report:
        from ir_guidance.runs import report

        result['report'] = [str(p) for p in report.write(Path(result['workdir']), args.report)]
    print(insertion.main_result_line(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
    if args.fault:
        return 0 if result.get('safe_stop') else 1
    return 0 if result['success'] else 1


def _campaign(args: argparse.Namespace) -> int:
    from ir_guidance.runs import campaign

    summary = campaign.run(seeds=args.seeds, phantoms=args.phantoms, workers=args.workers,
                           fault=args.fault, workdir=args.workdir, processes=args.processes)
    print(json.dumps(summary['summary'], indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + '\n', encoding='utf-8')
    return 0


def _bench(args: argparse.Namespace) -> int:
    run = {'sim': _bench_sim, 'kinematics': _bench_kinematics,
           'perception': _bench_perception, 'mapping': _bench_mapping,
           'planning': _bench_planning, 'control': _bench_control,
           'calibration': _bench_calibration}[args.name]
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
    result = sim.run(seed=args.seed, seconds=args.seconds or 2.0, phantom=phantom)
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


def _bench_mapping(args: argparse.Namespace) -> dict:
    from ir_guidance.bench import mapping

    result = mapping.run(seed=args.seed)
    result['meets_bar'] = bool(result['centerline_err_mm_p50'] <= 0.3
                               and result['radius_err_mm_p50'] <= 0.3)
    return result


def _bench_planning(args: argparse.Namespace) -> dict:
    from ir_guidance.bench import planning

    result = planning.run(seed=args.seed)
    result['meets_bar'] = bool(result['plan_success_rate'] >= 0.98
                               and result['planned_tip_err_mm_max'] <= 0.2)
    return result


def _bench_control(args: argparse.Namespace) -> dict:
    from ir_guidance.bench import control

    result = control.run(seconds=args.seconds or 30.0)
    result['meets_bar'] = bool(result['period_err_us_p99'] <= 50
                               and result['ratio_p99'] <= 0.25)
    return result


def _bench_calibration(args: argparse.Namespace) -> dict:
    from ir_guidance.bench import calibration

    return calibration.run(seed=args.seed)


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
