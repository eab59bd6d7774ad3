// The active KRaft controller: Admin#describeMetadataQuorum through the brokers, printed as
// "leader=<node id> epoch=<epoch>". Run as a single-file source program with Kafka's jars:
//   java -cp '<lib>/*' QuorumLeader.java host:port[,host:port...]
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.QuorumInfo;

public class QuorumLeader {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "20000");
        try (Admin admin = Admin.create(props)) {
            QuorumInfo info = admin.describeMetadataQuorum().quorumInfo().get();
            System.out.println("leader=" + info.leaderId() + " epoch=" + info.leaderEpoch());
        }
    }
}
