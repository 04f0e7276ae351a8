from qcg.pilotjob.agent.process_end import run_then_exit
from qcg.pilotjob.governor.cli import main

if __name__ == "__main__":
    run_then_exit(main)
