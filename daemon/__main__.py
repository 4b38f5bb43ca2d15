from zbridge_daemon.main import main

main()
