/* A counting storm: N threads (default 2) each call getppid(i) for i = 0, 1, 2, ... until killed,
   resting PAUSE microseconds (default 0) after every 100 calls. getppid ignores its argument; a
   trace taken with --args shows it as arg0, so whether a thread's calls are all there, in order,
   can be read off the trace. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned pause_us;

static void *storm(void *unused)
{
	(void)unused;
	for (unsigned long i = 0;; i++) {
		syscall(SYS_getppid, i);
		if (pause_us && i % 100 == 99)
			usleep(pause_us);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 2;
	pause_us = argc > 2 ? atoi(argv[2]) : 0;
	pthread_t t;

	for (int k = 1; k < threads; k++)
		pthread_create(&t, NULL, storm, NULL);
	storm(NULL);
	return 0;
}
