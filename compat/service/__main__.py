from qcg.pilotjob.service import program

if __name__ == "__main__":
    program()
