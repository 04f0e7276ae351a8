from qcg.pilotjob.agent.agent import main
from qcg.pilotjob.agent.process_end import run_then_exit

run_then_exit(main)
