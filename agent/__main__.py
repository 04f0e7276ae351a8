from qcg.pilotjob.agent.process_setup import keep_tls_out

keep_tls_out()      # before the agent's imports: asyncio would load OpenSSL

from qcg.pilotjob.agent.agent import main  # noqa: E402
from qcg.pilotjob.agent.process_end import run_then_exit  # noqa: E402

run_then_exit(main)
